"""Token usage and estimated cost per stage, from the API's usage fields; the spend limit.

The limit covers what the stage has bought across reruns: with a ledger (`open_ledger`, a
JSONL file beside the stage's output) every charge is appended as it happens and earlier
runs' charges count. A call may start only while spent + reserved < limit, and it reserves
its worst-case cost (`worst_case_usd`) until its answer is charged, so concurrent calls and
batches overshoot the limit by at most one call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

from data_pipeline.llm.pricing import BATCH_FACTOR, CACHE_WRITE_FACTOR, cost_usd, price_of
from data_pipeline.llm.types import LLMRequest, SpendLimitReached, Usage

TOKENS_PER_MESSAGE = 16   # role and formatting tokens the API adds around each message


def worst_case_usd(req: LLMRequest, batch: bool = False) -> float:
    """An upper bound on one call's cost: a token is at least one UTF-8 byte, the system
    block may be a cache write, and the answer may run to max_tokens."""
    inp, out = price_of(req.model)
    system = len((req.system or "").encode()) * (CACHE_WRITE_FACTOR if req.cache_system else 1.0)
    rest = sum(len(json.dumps(m["content"], ensure_ascii=False).encode()) + TOKENS_PER_MESSAGE
               for m in req.messages)
    usd = ((system + rest) * inp + req.max_tokens * out) / 1e6
    return usd * (BATCH_FACTOR if batch else 1.0)


@dataclasses.dataclass
class StageSpend:
    calls: int = 0             # answers bought from the API
    from_store: int = 0        # answers served by the store (calls saved)
    unreadable: int = 0        # answered but unreadable (charged at their worst-case cost)
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
    """Thread-safe totals per stage (this run), earlier runs' total, reservations."""

    def __init__(self, max_spend_usd: Optional[float] = None):
        self.max_spend_usd = max_spend_usd
        self.stages: dict[str, StageSpend] = {}
        self.before_usd = 0.0          # charged by earlier runs (from the ledger)
        self._ledger: Optional[Path] = None
        self._charged: set[str] = set()   # charge ids, so a batch item is never charged twice
        self._reserved = 0.0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)   # reservations settle

    def open_ledger(self, path: str | os.PathLike) -> None:
        """Count earlier runs' charges from `path` and append this run's to it."""
        path = Path(path)
        with self._lock:
            self._ledger = path
            if not path.exists():
                return
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:   # a torn last line of a killed run: that charge is lost
                    continue
                if row["id"] not in self._charged:
                    self._charged.add(row["id"])
                    self.before_usd += row["usd"]

    def _stage(self, stage: str) -> StageSpend:
        return self.stages.setdefault(stage, StageSpend())

    def _record(self, charge_id: str, stage: str, usd: float) -> None:
        """Append one charge to the ledger (caller holds the lock)."""
        self._charged.add(charge_id)
        if self._ledger is None:
            return
        self._ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(self._ledger, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": charge_id, "stage": stage, "usd": usd}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add_paid(self, stage: str, model: str, usage: Usage, batch: bool = False,
                 charge_id: Optional[str] = None) -> bool:
        """Charge one answer; False if `charge_id` was already charged (a batch item read twice)."""
        cost = cost_usd(model, usage.input_tokens, usage.output_tokens,
                        usage.cache_creation_input_tokens, usage.cache_read_input_tokens, batch)
        with self._lock:
            if charge_id is not None and charge_id in self._charged:
                return False
            self._record(charge_id or uuid.uuid4().hex, stage, cost)
            s = self._stage(stage)
            s.calls += 1
            s.input_tokens += usage.input_tokens
            s.output_tokens += usage.output_tokens
            s.cache_write_tokens += usage.cache_creation_input_tokens
            s.cache_read_tokens += usage.cache_read_input_tokens
            s.cost_usd += cost
        return True

    def add_unreadable(self, stage: str, usd: float) -> None:
        """Charge an answer the server sent but we could not read, at its worst-case cost."""
        with self._lock:
            self._record(uuid.uuid4().hex, stage, usd)
            s = self._stage(stage)
            s.unreadable += 1
            s.cost_usd += usd

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

    def spent_usd(self) -> float:
        """Everything charged, this run and earlier ones."""
        return self.before_usd + self.total().cost_usd

    @contextlib.contextmanager
    def reserve(self, costs: Sequence[float]) -> Iterator[int]:
        """Reserve the worst-case costs of the longest prefix of calls allowed to start (each
        may start while spent + reserved < limit); yields its length and releases the
        reservation on exit. While none may start but others hold reservations, wait for
        them to settle; raises SpendLimitReached when none may start and none is in flight."""
        with self._cond:
            while True:
                spent = self.before_usd + sum(s.cost_usd for s in self.stages.values())
                n, reserved = 0, 0.0
                for cost in costs:
                    if self.max_spend_usd is not None and spent + self._reserved + reserved >= self.max_spend_usd:
                        break
                    n, reserved = n + 1, reserved + cost
                if n > 0 or not costs:
                    break
                if self._reserved == 0:
                    raise SpendLimitReached(
                        f"spend limit reached: ${spent:.4f} of ${self.max_spend_usd:.4f} spent (all runs of "
                        f"this stage); every answer so far is in the store, rerun with a higher --max-spend "
                        f"to continue")
                self._cond.wait()
            self._reserved += reserved
        try:
            yield n
        finally:
            with self._cond:
                self._reserved -= reserved
                self._cond.notify_all()

    def summary_rows(self) -> list[dict]:
        with self._lock:
            return [{"stage": name, **dataclasses.asdict(s), "cache_read_share": round(s.cache_read_share, 4)}
                    for name, s in self.stages.items()]
