"""`replay`: answers only from the store, so a shipped corpus re-runs offline."""

from __future__ import annotations

from data_pipeline.llm.base import LLMClient
from data_pipeline.llm.types import LLMRequest, LLMResponse, MissingFromStore


class ReplayClient(LLMClient):
    name = "replay"

    def _call(self, req: LLMRequest) -> LLMResponse:
        raise MissingFromStore(
            f"replay: no stored answer for a {req.stage!r} request (key {req.key()[:12]}) in "
            f"{self.store.directory}; the prompt, spec or config differs from the stored run, "
            f"or use --backend anthropic to fetch it")
