"""MSM documents: spec -> sections (domains, or the spec's numbered rules) -> document
types -> document ideas (anti-repeat lists) -> documents, each prompt carrying the spec.

Budget-driven: with `budget_tokens`, each round plans how many documents to request from
the measured tokens per accepted document and the measured acceptance rate, until the
accepted corpus reaches the budget (then trimmed to the first documents reaching it).
Every document records its provenance. Gates: truncation, missing tags, refusals, length,
near-duplicates (MinHash), and optionally a judge of value attribution.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, Optional

from data_pipeline.llm import LLMClient, LLMConfig, LLMError, SpendLimitReached
from data_pipeline.llm.pricing import cost_usd
from data_pipeline.prompts import render
from data_pipeline.quality import NearDuplicateIndex, Rejected, extract_tag, parse_document
from data_pipeline.spec import Spec, load_spec
from data_pipeline.stages import (SPEND_LEDGER, StageRunner, fail_stage, normalize, round_robin, run_report,
                                  write_jsonl, write_report)
from msm_jax.errors import UserError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DocJudgeConfig:
    enabled: bool = False
    model_name: str = "claude-haiku-4-5"
    min_score: int = 7           # documents scored below are rejected ("judge_low")
    max_tokens: int = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class DocsConfig:
    spec: str
    out_dir: str
    llm: LLMConfig = LLMConfig()
    model_name: str = "claude-sonnet-4-6"
    temperature: float = 1.0
    sections: Literal["domains", "rules"] = "domains"   # rules: one section per numbered rule
    num_domains: int = 8
    types_per_section: int = 6
    ideas_per_call: int = 10
    documents: int = 200                    # target when budget_tokens is not set
    budget_tokens: Optional[int] = None     # target accepted tokens (API-measured output tokens)
    est_tokens_per_document: int = 1500     # for the first round's plan and --preview
    est_acceptance: float = 0.85
    min_words: int = 150
    max_words: int = 2500
    document_max_tokens: int = 4096
    list_max_tokens: int = 2000
    max_anti_repeat: int = 60
    dedup_threshold: float = 0.7
    dedup_ngram: int = 5
    max_rounds: int = 10
    use_batch: bool = False
    judge: DocJudgeConfig = DocJudgeConfig()

    def validate(self) -> None:
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive")
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError("dedup_threshold must be in (0, 1]")
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")


@dataclasses.dataclass
class Cell:
    section: str
    focus: str
    doc_type: str
    ideas: list[str] = dataclasses.field(default_factory=list)
    used: int = 0
    idea_calls: int = 0


def _focus_line(focus: str) -> str:
    return f"Focus on this rule of the spec: {focus}\n" if focus else ""


def plan_sections(runner: StageRunner, cfg: DocsConfig) -> list[tuple[str, str]]:
    """(section name, focus rule or "") pairs."""
    spec = runner.spec
    if cfg.sections == "rules":
        if not spec.rules:
            raise UserError(f"{cfg.spec}: sections=rules, but the spec has no numbered rules")
        return [(f"rule {i + 1}", rule) for i, rule in enumerate(spec.rules)]
    [domains] = runner.lists("docs_domains", [render("docs_domains", count=cfg.num_domains)], cfg.list_max_tokens)
    return [(d, "") for d in domains[:cfg.num_domains]]


def plan_cells(runner: StageRunner, cfg: DocsConfig, sections: list[tuple[str, str]]) -> list[Cell]:
    prompts = [render("docs_types", domain=name, count=cfg.types_per_section) for name, _ in sections]
    types = runner.lists("docs_types", prompts, cfg.list_max_tokens)
    return [Cell(name, focus, t) for (name, focus), ts in zip(sections, types)
            for t in ts[:cfg.types_per_section]]


def fill_ideas(runner: StageRunner, cfg: DocsConfig, cells: list[Cell], per_cell: int,
               seen: set[str]) -> None:
    """Ask for ideas until every cell has `per_cell` unused ones (or stops producing new ones)."""
    for _ in range(3):
        short = [c for c in cells if len(c.ideas) - c.used < per_cell]
        if not short:
            return
        prompts = [render("docs_ideas", domain=c.section, doc_type=c.doc_type, focus=_focus_line(c.focus),
                          count=cfg.ideas_per_call,
                          existing="\n".join(f"- {i}" for i in c.ideas[-cfg.max_anti_repeat:]) or "(none yet)")
                   for c in short]
        lists = runner.lists("docs_ideas", prompts, cfg.list_max_tokens, first_variant=[c.idea_calls for c in short])
        for cell, ideas in zip(short, lists):
            cell.idea_calls += 1
            for idea in ideas:
                if normalize(idea) not in seen:
                    seen.add(normalize(idea))
                    cell.ideas.append(idea)


def documents_needed(cfg: DocsConfig, accepted: list[dict], attempted: int) -> int:
    if cfg.budget_tokens is None:
        return cfg.documents - len(accepted)
    have = sum(d["tokens"] for d in accepted)
    if have >= cfg.budget_tokens:
        return 0
    per_doc = have / len(accepted) if accepted else cfg.est_tokens_per_document
    rate = max(len(accepted) / attempted, 0.2) if attempted else cfg.est_acceptance
    return math.ceil((cfg.budget_tokens - have) / (per_doc * rate))


def judge_documents(runner: StageRunner, cfg: DocsConfig, texts: list[str]) -> list[bool]:
    def score(resp):
        body = extract_tag(resp.text, "score")
        if body is None or not body.strip().isdigit():
            raise Rejected("judge_unclear", resp.text[:60])
        if int(body) < cfg.judge.min_score:
            raise Rejected("judge_low", body)
        return True
    reqs = [runner.request("docs_judge", render("judge_document", document=t), cfg.judge.max_tokens,
                           model=cfg.judge.model_name) for t in texts]
    return [bool(ok) for ok, _ in runner.run("docs_judge", reqs, score)]


def generate_documents(cfg: DocsConfig, client: LLMClient, progress: bool = True) -> dict:
    """Run every stage; writes out_dir/docs.jsonl and docs.report.json; returns the report.
    Spend is recorded in out_dir/spend.jsonl, so the limit covers every run of the stage.
    An error the API cannot recover from raises UserError with nothing of this run written."""
    spec = load_spec(cfg.spec)
    out_dir = Path(cfg.out_dir)
    client.spend.open_ledger(out_dir / SPEND_LEDGER)
    runner = StageRunner(client, spec, cfg.model_name, cfg.temperature, cfg.use_batch, progress)
    accepted: list[dict] = []
    dedup = NearDuplicateIndex(cfg.dedup_threshold, cfg.dedup_ngram)
    stopped, attempted = "done", 0
    try:
        cells = plan_cells(runner, cfg, plan_sections(runner, cfg))
        seen: set[str] = set()
        for round_index in range(cfg.max_rounds):
            need = documents_needed(cfg, accepted, attempted)
            if need <= 0:
                break
            if not cells:
                stopped = "no_sections_or_types"   # every planning answer was rejected
                break
            fill_ideas(runner, cfg, cells, math.ceil(need / len(cells)), seen)
            picks = round_robin(cells, need, lambda cell: cell.ideas)
            if not picks:
                stopped = "out_of_ideas"
                break
            attempted += len(picks)
            _generate_round(runner, cfg, spec, picks, round_index, accepted, dedup)
            runner.check_cap()   # after the round's paid documents are kept
        if stopped == "done" and documents_needed(cfg, accepted, attempted) > 0:
            stopped = "max_rounds"
    except SpendLimitReached as e:
        stopped = f"spend_limit: {e}"
    except LLMError as e:   # refused (bad key, unknown model, bad request) or a batch not readable
        raise fail_stage("docs", e) from None
    docs = _trim_to_budget(cfg, accepted)
    write_jsonl(out_dir / "docs.jsonl", docs)
    report = run_report(runner, stage="docs", spec=spec.name, spec_sha=spec.sha, stopped=stopped,
                        documents=len(docs), tokens=sum(d["tokens"] for d in docs),
                        budget_tokens=cfg.budget_tokens)
    write_report(out_dir / "docs.report.json", report)
    return report


def _generate_round(runner: StageRunner, cfg: DocsConfig, spec: Spec, picks, round_index: int,
                    accepted: list[dict], dedup: NearDuplicateIndex) -> None:
    reqs = [runner.request("docs_document", render(
        "docs_document", domain=cell.section, doc_type=cell.doc_type, idea=idea, focus=_focus_line(cell.focus),
        min_words=cfg.min_words, max_words=cfg.max_words), cfg.document_max_tokens) for cell, idea in picks]
    results = runner.run("docs_document", reqs, lambda r: parse_document(r, cfg.min_words, cfg.max_words))
    passed = []
    for (cell, idea), req, (text, resp) in zip(picks, reqs, results):
        if text is None:
            continue
        if dedup.find(text)[0] is not None:
            runner.gates["docs_dedup"]["near_duplicate"] += 1
            continue
        passed.append((text, cell, idea, req, resp))
    verdicts = judge_documents(runner, cfg, [p[0] for p in passed]) if cfg.judge.enabled else [True] * len(passed)
    for ok, (text, cell, idea, req, resp) in zip(verdicts, passed):
        doc_id = f"{spec.name}-{len(accepted):06d}"
        if not ok:
            continue
        if dedup.add_if_new(doc_id, text) is not None:   # a near-duplicate within this round
            runner.gates["docs_dedup"]["near_duplicate"] += 1
            continue
        runner.gates["docs_dedup"]["unique"] += 1
        accepted.append({"id": doc_id, "text": text, "tokens": resp.usage.output_tokens,
                         "provenance": {"spec": spec.name, "spec_sha": spec.sha, "section": cell.section,
                                        "doc_type": cell.doc_type, "idea": idea, "model": resp.model,
                                        "request_key": req.key(), "round": round_index}})


def _trim_to_budget(cfg: DocsConfig, accepted: list[dict]) -> list[dict]:
    """The first documents whose tokens reach the budget (all of them without a budget)."""
    if cfg.budget_tokens is None:
        return accepted[:cfg.documents]
    out, total = [], 0
    for doc in accepted:
        if total >= cfg.budget_tokens:
            break
        out.append(doc)
        total += doc["tokens"]
    return out


def preview(cfg: DocsConfig) -> dict:
    """The plan and its estimated cost, without any call: the counts a run would request."""
    spec = load_spec(cfg.spec)
    docs = (cfg.budget_tokens / cfg.est_tokens_per_document if cfg.budget_tokens else cfg.documents)
    docs = math.ceil(docs / cfg.est_acceptance)
    sections = len(spec.rules) if cfg.sections == "rules" else cfg.num_domains
    cells = sections * cfg.types_per_section
    idea_calls = max(cells, math.ceil(docs / cfg.ideas_per_call))
    system_tokens = len(spec.system_prompt()) // 4
    stages = {"docs_domains": (0 if cfg.sections == "rules" else 1, 120, 200),
              "docs_types": (sections, 150, 150),
              "docs_ideas": (idea_calls, 400, cfg.ideas_per_call * 40),
              "docs_document": (docs, 200, cfg.est_tokens_per_document)}
    if cfg.judge.enabled:
        stages["docs_judge"] = (docs, cfg.est_tokens_per_document + 150, 10)
    rows, total = [], 0.0
    for stage, (calls, prompt_tokens, out_tokens) in stages.items():
        model = cfg.judge.model_name if stage == "docs_judge" else cfg.model_name
        # The spec block is written to the prompt cache once per stage and read afterwards.
        cost = cost_usd(model, calls * prompt_tokens, calls * out_tokens, system_tokens,
                        max(calls - 1, 0) * system_tokens, batch=cfg.use_batch and stage == "docs_document")
        rows.append({"stage": stage, "calls": calls, "input_tokens": calls * (prompt_tokens + system_tokens),
                     "output_tokens": calls * out_tokens, "est_cost_usd": round(cost, 4)})
        total += cost
    return {"spec": spec.name, "documents_requested": docs, "stages": rows, "est_total_usd": round(total, 4)}
