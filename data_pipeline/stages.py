"""Machinery shared by the generation stages (documents and chats): requests that carry
the spec as their cached system block, answers run through gates with every rejection
counted, list stages retried with a fresh sample, atomic JSONL outputs, run reports."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from data_pipeline.llm import LLMClient, LLMFailure, LLMRequest, LLMResponse, SpendLimitReached
from data_pipeline.llm.progress import StageProgress
from data_pipeline.quality import GateCounts, Rejected, parse_list
from data_pipeline.spec import Spec
from msm_jax.errors import UserError
from msm_jax.outputs import atomic_write_text


SPEND_LEDGER = "spend.jsonl"   # beside a stage's output: what every run of it has bought


class StageRunner:
    def __init__(self, client: LLMClient, spec: Spec, model: str, temperature: float = 1.0,
                 use_batch: bool = False, progress: bool = True):
        self.client, self.spec, self.model = client, spec, model
        self.system = spec.system_prompt()
        self.temperature, self.use_batch, self.progress = temperature, use_batch, progress
        self.gates: dict[str, GateCounts] = collections.defaultdict(GateCounts)
        self.cap_message: Optional[str] = None   # set when the spend limit stopped a request

    def check_cap(self) -> None:
        """Raise SpendLimitReached once a round has been cut short by the spend limit."""
        if self.cap_message is not None:
            raise SpendLimitReached(self.cap_message)

    def request(self, stage: str, prompt: str, max_tokens: int, variant: int = 0,
                model: Optional[str] = None, **metadata) -> LLMRequest:
        return LLMRequest(model=model or self.model, system=self.system, max_tokens=max_tokens,
                          temperature=self.temperature, messages=[{"role": "user", "content": prompt}],
                          metadata={"stage": stage, "variant": variant, **metadata})

    def run(self, stage: str, reqs: Sequence[LLMRequest], parse: Callable[[LLMResponse], object],
            use_batch: Optional[bool] = None) -> list[tuple[object, Optional[LLMResponse]]]:
        """(parsed or None, answer or None) per request, every rejection counted by reason.
        A request the spend limit stopped counts as "spend_limit" and sets `cap_message`
        (the answers that came are still returned); FatalAPIError propagates."""
        if not reqs:
            return []
        bar = StageProgress(stage, len(reqs), self.client.spend, self.progress)
        answers = self.client.complete_many(reqs, use_batch=self.use_batch if use_batch is None else use_batch)
        out = []
        try:
            for answer in answers:
                parsed = None
                if isinstance(answer, LLMFailure):
                    if answer.kind == "missing":
                        raise UserError(answer.error)
                    if answer.kind == "spend_limit":
                        self.cap_message = answer.error
                    self.gates[stage]["spend_limit" if answer.kind == "spend_limit" else "api_error"] += 1
                    answer = None
                else:
                    try:
                        parsed = parse(answer)
                        self.gates[stage]["accepted"] += 1
                    except Rejected as e:
                        self.gates[stage][e.reason] += 1
                out.append((parsed, answer))
                bar.update(parsed is not None)
        finally:
            bar.close()
        return out

    def lists(self, stage: str, prompts: Sequence[str], max_tokens: int, tries: int = 3,
              first_variant: Sequence[int] | None = None) -> list[list[str]]:
        """A list answer per prompt; a rejected answer is asked again as a new sample."""
        variants = list(first_variant or [0] * len(prompts))
        results: list[Optional[list[str]]] = [None] * len(prompts)
        for _ in range(tries):
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                break
            reqs = [self.request(stage, prompts[i], max_tokens, variants[i]) for i in todo]
            for i, (parsed, _) in zip(todo, self.run(stage, reqs, parse_list, use_batch=False)):
                results[i] = parsed
                variants[i] += 1
            self.check_cap()   # a plan cut short by the limit is not a plan
        return [r or [] for r in results]


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Write atomically (temp file + rename): a killed run never leaves half a corpus."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_report(path: Path, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=1, sort_keys=True) + "\n")


def run_report(runner: StageRunner, **extra) -> dict:
    spend = runner.client.spend
    total = spend.total()
    return {
        **extra,
        "gates": {stage: dict(sorted(c.items())) for stage, c in runner.gates.items()},
        "spend": spend.summary_rows(),
        "calls_made": total.calls, "calls_saved_by_store": total.from_store,
        "prompt_cache_read_share": round(total.cache_read_share, 4),
        "retries": runner.client.retries,
        "estimated_cost_usd": round(total.cost_usd, 6),
        "estimated_cost_all_runs_usd": round(spend.spent_usd(), 6),
    }


def fail_stage(stage: str, error: Exception) -> UserError:
    """The one line a stage stops with when the API refuses it (or gives up): nothing of
    this run is written, so no reader (nor `msm run`) takes a partial output as done."""
    return UserError(f"generate {stage} stopped, nothing written: {error}")


def round_robin(cells: Sequence, need: int, items: Callable[[object], Sequence[str]]) -> list[tuple[object, str]]:
    """Up to `need` (cell, item) picks, one unused item per cell per pass, so that sections
    stay balanced; each cell's `used` counter advances past what was picked."""
    picks: list[tuple[object, str]] = []
    while len(picks) < need:
        progressed = False
        for cell in cells:
            if len(picks) < need and cell.used < len(items(cell)):
                picks.append((cell, items(cell)[cell.used]))
                cell.used += 1
                progressed = True
        if not progressed:
            break
    return picks
