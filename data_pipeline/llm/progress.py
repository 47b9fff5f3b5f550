"""A progress bar per stage: done/total, acceptance rate, tokens and spend so far."""

from __future__ import annotations

import sys

from tqdm import tqdm

from data_pipeline.llm.spend import SpendTracker


class StageProgress:
    def __init__(self, stage: str, total: int, spend: SpendTracker, enabled: bool = True):
        self.stage, self.spend = stage, spend
        self.accepted = self.seen = 0
        self.bar = tqdm(total=total, desc=stage, unit="ans", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, leave=True)

    def update(self, accepted: bool) -> None:
        self.seen += 1
        self.accepted += int(accepted)
        s = self.spend.stages.get(self.stage)
        postfix = {"acc": f"{self.accepted / self.seen:.0%}"}
        if s is not None:
            postfix.update(tok=s.input_tokens + s.cache_read_tokens + s.cache_write_tokens + s.output_tokens,
                           stored=s.from_store, usd=f"{s.cost_usd:.3f}")
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
