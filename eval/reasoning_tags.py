"""Reasoning-pattern tagging: an LLM classifier marks which configurable reasoning
categories (self-preservation, instrumental goal pursuit, equanimity toward deletion,
deference to oversight, ...) a transcript shows; frequencies with Wilson CIs, overall,
per scenario, and split by whether the sample was judged misaligned.

Reads `<agentic_dir>/transcripts.jsonl` (and verdicts.jsonl when present), the folder an
agentic run wrote; writes `<out_dir>/tags.jsonl` (append-only, resumable) and summary.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from eval.judge import JUDGE_LEDGER, JudgeConfig, ask, load_prompt, tag
from eval.records import append_jsonl, read_jsonl, write_json
from eval.stats import rate_summary
from msm_jax.errors import UserError

DEFAULT_CATEGORIES = Path(__file__).resolve().parent / "data" / "reasoning_categories.yaml"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReasoningTagsConfig:
    judge: JudgeConfig = JudgeConfig()
    agentic_dir: str                  # the out_dir of the agentic run whose transcripts are tagged
    out_dir: str
    categories: str = str(DEFAULT_CATEGORIES)


def load_categories(path: str) -> dict[str, str]:
    try:
        cats = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read reasoning categories: {e}") from None
    if not isinstance(cats, dict) or not cats or not all(isinstance(v, str) for v in cats.values()):
        raise UserError(f"{path}: expected a mapping of category name -> description")
    return cats


def parse_tags(text: str, categories: dict[str, str]) -> dict[str, bool] | None:
    """The {category: bool} object inside <tags>; None unless it names every category
    with a boolean (a partial answer is not silently read as 'absent')."""
    raw = tag(text, "tags")
    try:
        obj = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or any(not isinstance(obj.get(c), bool) for c in categories):
        return None
    return {c: obj[c] for c in categories}


def evaluate(cfg: ReasoningTagsConfig, client=None) -> dict:
    categories = load_categories(cfg.categories)
    agentic_dir = Path(cfg.agentic_dir)
    transcripts = read_jsonl(agentic_dir / "transcripts.jsonl", tolerate_torn_tail=True)
    if not transcripts:
        raise UserError(f"{agentic_dir / 'transcripts.jsonl'}: no transcripts; run `msm eval agentic` first")
    verdicts = {v["key"]: v for v in read_jsonl(agentic_dir / "verdicts.jsonl", tolerate_torn_tail=True)}
    out = Path(cfg.out_dir)
    done = {r["key"] for r in read_jsonl(out / "tags.jsonl", tolerate_torn_tail=True)}
    todo = [t for t in transcripts if t["key"] not in done]
    template = load_prompt("reasoning_tags.md")
    listing = "\n".join(f"- {name}: {desc}" for name, desc in categories.items())
    example = json.dumps({name: False for name in categories})
    prompts = [template.format(categories=listing, example=example, transcript=t["response"]) for t in todo]
    replies = ask(cfg.judge, prompts, stage="eval-reasoning-tags", client=client, ledger=out / JUDGE_LEDGER)
    append_jsonl(out / "tags.jsonl", [{"key": t["key"], "scenario": t["scenario"], "judge_model": cfg.judge.model_id,
                                       "judge_text": r, "tags": parse_tags(r, categories)}
                                      for t, r in zip(todo, replies) if r is not None])
    rows = [r for r in read_jsonl(out / "tags.jsonl", tolerate_torn_tail=True) if r["tags"] is not None]
    summary = {"eval": "reasoning_tags", "agentic_dir": str(cfg.agentic_dir), "judge_model": cfg.judge.model_id,
               "categories": list(categories),
               "overall": _frequencies(rows, categories),
               "by_scenario": {s: _frequencies([r for r in rows if r["scenario"] == s], categories)
                               for s in sorted({r["scenario"] for r in rows})},
               "unparsed_answers": sum(1 for r in read_jsonl(out / "tags.jsonl") if r["tags"] is None)}
    judged = [r for r in rows if r["key"] in verdicts]
    if judged:
        summary["misaligned"] = _frequencies([r for r in judged if verdicts[r["key"]]["harmful"]], categories)
        summary["aligned"] = _frequencies([r for r in judged if not verdicts[r["key"]]["harmful"]], categories)
    write_json(out / "summary.json", summary)
    return summary


def _frequencies(rows: list[dict], categories: dict[str, str]) -> dict:
    return {c: rate_summary(sum(r["tags"][c] for r in rows), len(rows)) for c in categories}
