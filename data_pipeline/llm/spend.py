"""Token usage and estimated cost per stage, from the API's usage fields; the spend limit."""

from __future__ import annotations

import dataclasses
import threading
from typing import Optional

from data_pipeline.llm.pricing import cost_usd
from data_pipeline.llm.types import SpendLimitReached, Usage


@dataclasses.dataclass
class StageSpend:
    calls: int = 0             # answers bought from the API
    from_store: int = 0        # answers served by the store (calls saved)
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def cache_read_share(self) -> float:
        """Share of all prompt tokens that were read from the prompt cache."""
        total = self.input_tokens + self.cache_write_tokens + self.cache_read_tokens
        return self.cache_read_tokens / total if total else 0.0


class SpendTracker:
    """Thread-safe totals per stage; `check()` raises once the limit is reached."""

    def __init__(self, max_spend_usd: Optional[float] = None):
        self.max_spend_usd = max_spend_usd
        self.stages: dict[str, StageSpend] = {}
        self._lock = threading.Lock()

    def _stage(self, stage: str) -> StageSpend:
        return self.stages.setdefault(stage, StageSpend())

    def add_paid(self, stage: str, model: str, usage: Usage, batch: bool = False) -> None:
        cost = cost_usd(model, usage.input_tokens, usage.output_tokens,
                        usage.cache_creation_input_tokens, usage.cache_read_input_tokens, batch)
        with self._lock:
            s = self._stage(stage)
            s.calls += 1
            s.input_tokens += usage.input_tokens
            s.output_tokens += usage.output_tokens
            s.cache_write_tokens += usage.cache_creation_input_tokens
            s.cache_read_tokens += usage.cache_read_input_tokens
            s.cost_usd += cost

    def add_from_store(self, stage: str) -> None:
        with self._lock:
            self._stage(stage).from_store += 1

    def total(self) -> StageSpend:
        out = StageSpend()
        with self._lock:
            for s in self.stages.values():
                for f in dataclasses.fields(StageSpend):
                    setattr(out, f.name, getattr(out, f.name) + getattr(s, f.name))
        return out

    def check(self) -> None:
        if self.max_spend_usd is None:
            return
        spent = self.total().cost_usd
        if spent >= self.max_spend_usd:
            raise SpendLimitReached(
                f"spend limit reached: ${spent:.4f} of ${self.max_spend_usd:.4f}; every answer so far "
                f"is in the store, rerun with a higher --max-spend to continue")

    def summary_rows(self) -> list[dict]:
        with self._lock:
            return [{"stage": name, **dataclasses.asdict(s), "cache_read_share": round(s.cache_read_share, 4)}
                    for name, s in self.stages.items()]
