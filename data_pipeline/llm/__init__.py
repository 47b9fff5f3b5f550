"""The LLM layer: one client interface over Claude (Messages + Batches), an
OpenAI-compatible endpoint and a replay-only backend, all behind one answer store.

    from data_pipeline.llm import LLMConfig, LLMRequest, make_client
    client = make_client(LLMConfig(backend="anthropic", store_dir="runs/store"))
    resp = client.complete(LLMRequest(model="claude-sonnet-4-6", messages=[...], max_tokens=512))
    answers = client.complete_many(requests, use_batch=True)   # LLMResponse | LLMFailure each
"""

from __future__ import annotations

from data_pipeline.llm.base import LLMClient
from data_pipeline.llm.config import LLMConfig
from data_pipeline.llm.spend import SpendTracker, StageSpend
from data_pipeline.llm.store import AnswerStore
from data_pipeline.llm.types import (FatalAPIError, LLMError, LLMFailure, LLMRequest, LLMResponse, MissingFromStore,
                                     SpendLimitReached, TransientError, Usage)

__all__ = ["AnswerStore", "FatalAPIError", "LLMClient", "LLMConfig", "LLMError", "LLMFailure", "LLMRequest", "LLMResponse",
           "MissingFromStore", "SpendLimitReached", "SpendTracker", "StageSpend", "TransientError", "Usage",
           "make_client"]


def make_client(config: LLMConfig, store: AnswerStore | None = None, spend: SpendTracker | None = None,
                **kwargs) -> LLMClient:
    """The client for `config.backend`; extra kwargs (e.g. `sleep`) go to its constructor."""
    if config.backend == "anthropic":
        from data_pipeline.llm.anthropic_backend import AnthropicClient
        return AnthropicClient(config, store, spend, **kwargs)
    if config.backend == "openai":
        from data_pipeline.llm.openai_backend import OpenAICompatibleClient
        return OpenAICompatibleClient(config, store, spend, **kwargs)
    if config.backend == "replay":
        from data_pipeline.llm.replay_backend import ReplayClient
        return ReplayClient(config, store, spend, **kwargs)
    raise ValueError(f"unknown LLM backend {config.backend!r}")
