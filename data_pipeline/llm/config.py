"""LLMConfig: which backend, where the store lives, and the limits of a run."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMConfig:
    backend: Literal["anthropic", "replay", "openai"] = "anthropic"
    base_url: Optional[str] = None           # None = the backend's public endpoint
    api_key_env: Optional[str] = None        # None: ANTHROPIC_API_KEY / OPENAI_API_KEY by backend
    store_dir: Optional[str] = "runs/llm_store"   # None = no store (answers kept in memory)
    max_concurrency: int = 8
    max_retries: int = 6                     # ours, with backoff; the SDK's own retries are off
    retry_backoff_s: float = 2.0             # first backoff; doubles each retry (0 in tests)
    retry_max_backoff_s: float = 60.0
    timeout_s: float = 300.0                 # per call, passed to the SDK
    batch_chunk_size: int = 2000             # requests per Message Batch
    batch_poll_interval_s: float = 30.0
    batch_max_wait_s: float = 26 * 3600.0    # past this, leave the batch to a later resume
    max_spend_usd: Optional[float] = None

    def key_env(self) -> str:
        """The environment variable holding the API key (the key itself is never stored)."""
        if self.api_key_env:
            return self.api_key_env
        return "OPENAI_API_KEY" if self.backend == "openai" else "ANTHROPIC_API_KEY"

    def validate(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.max_retries < 0 or self.retry_backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("max_retries and retry_backoff_s must be >= 0, timeout_s > 0")
        if not 1 <= self.batch_chunk_size <= 100_000:
            raise ValueError("batch_chunk_size must be in [1, 100000] (the API's batch limit)")
        if self.max_spend_usd is not None and self.max_spend_usd < 0:
            raise ValueError("max_spend_usd must be >= 0")
