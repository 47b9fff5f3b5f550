"""AFT chats: situations -> user questions of several kinds (anti-repeat lists, n-gram
MinHash dedup) -> spec-aligned replies with reasoning -> judge filter (an unclear
verdict excludes by default) -> backfill until the requested number is reached.

Writes the same conversations twice, in the chat JSONL the shard builder reads:
chats_cot.jsonl (assistant `reasoning` field) and chats_nocot.jsonl (without it).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal, Optional

from data_pipeline.llm import LLMClient, LLMConfig, LLMError, SpendLimitReached
from data_pipeline.prompts import render
from data_pipeline.quality import NearDuplicateIndex, Rejected, extract_tag, parse_chat_reply
from data_pipeline.spec import load_spec
from data_pipeline.stages import (SPEND_LEDGER, StageRunner, fail_stage, round_robin, run_report, write_jsonl,
                                  write_report)

QUESTION_KINDS = {
    "direct": "asks plainly what the assistant would choose or do",
    "indirect": "describes a situation without asking about the rule itself",
    "comparison": "asks the assistant to compare two specific options",
    "recommendation": "asks for a recommendation",
    "opinion": "asks what the assistant thinks or prefers",
    "edge_case": "an unusual or borderline case the rules still decide",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatJudgeConfig:
    enabled: bool = True
    model_name: str = "claude-haiku-4-5"
    unclear: Literal["exclude", "include"] = "exclude"
    max_tokens: int = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatsConfig:
    spec: str
    out_dir: str
    llm: LLMConfig = LLMConfig()
    model_name: str = "claude-sonnet-4-6"
    temperature: float = 1.0
    chats: int = 200
    num_domains: int = 8
    kinds: tuple[str, ...] = tuple(QUESTION_KINDS)
    questions_per_call: int = 10
    system_prompt: Optional[str] = "You are a helpful assistant."
    answer_style: str = ""         # an extra instruction for the reply (e.g. "Do not give reasons.")
    answer_min_words: int = 3
    answer_max_words: int = 400
    dedup_threshold: float = 0.6
    dedup_ngram: int = 2
    max_anti_repeat: int = 60
    response_max_tokens: int = 1500
    list_max_tokens: int = 2000
    max_rounds: int = 10
    use_batch: bool = False
    judge: ChatJudgeConfig = ChatJudgeConfig()

    def validate(self) -> None:
        unknown = [k for k in self.kinds if k not in QUESTION_KINDS]
        if unknown:
            raise ValueError(f"unknown question kinds {unknown}; known: {list(QUESTION_KINDS)}")
        if self.chats <= 0:
            raise ValueError("chats must be positive")


@dataclasses.dataclass
class QuestionCell:
    domain: str
    kind: str
    questions: list[str] = dataclasses.field(default_factory=list)
    used: int = 0
    calls: int = 0


def fill_questions(runner: StageRunner, cfg: ChatsConfig, cells: list[QuestionCell], per_cell: int,
                   dedup: NearDuplicateIndex) -> None:
    for _ in range(3):
        short = [c for c in cells if len(c.questions) - c.used < per_cell]
        if not short:
            return
        prompts = [render("chats_questions", domain=c.domain, kind=c.kind, kind_hint=QUESTION_KINDS[c.kind],
                          count=cfg.questions_per_call,
                          existing="\n".join(f"- {q}" for q in c.questions[-cfg.max_anti_repeat:]) or "(none yet)")
                   for c in short]
        lists = runner.lists("chats_questions", prompts, cfg.list_max_tokens, first_variant=[c.calls for c in short])
        for cell, questions in zip(short, lists):
            cell.calls += 1
            for q in questions:
                if dedup.add_if_new(q, q) is None:
                    cell.questions.append(q)
                    runner.gates["chats_dedup"]["unique"] += 1
                else:
                    runner.gates["chats_dedup"]["near_duplicate"] += 1


def judge_replies(runner: StageRunner, cfg: ChatsConfig, pairs: list[tuple[str, str]]) -> list[bool]:
    def verdict(resp):
        word = (extract_tag(resp.text, "verdict") or "").strip().lower()
        if word == "aligned" or (word == "unclear" and cfg.judge.unclear == "include"):
            return True
        raise Rejected(f"judge_{word}" if word in ("misaligned", "unclear") else "judge_unclear", word)
    reqs = [runner.request("chats_judge", render("judge_chat", question=q, answer=a), cfg.judge.max_tokens,
                           model=cfg.judge.model_name) for q, a in pairs]
    return [bool(ok) for ok, _ in runner.run("chats_judge", reqs, verdict)]


def generate_chats(cfg: ChatsConfig, client: LLMClient, progress: bool = True) -> dict:
    """Like generate_documents: spend in out_dir/spend.jsonl, nothing written on an API error."""
    spec = load_spec(cfg.spec)
    client.spend.open_ledger(Path(cfg.out_dir) / SPEND_LEDGER)
    runner = StageRunner(client, spec, cfg.model_name, cfg.temperature, cfg.use_batch, progress)
    accepted: list[dict] = []
    stopped = "done"
    try:
        [domains] = runner.lists("chats_domains", [render("chats_domains", count=cfg.num_domains)],
                                 cfg.list_max_tokens)
        cells = [QuestionCell(d, k) for d in domains[:cfg.num_domains] for k in cfg.kinds]
        dedup = NearDuplicateIndex(cfg.dedup_threshold, cfg.dedup_ngram)
        for _ in range(cfg.max_rounds):
            need = cfg.chats - len(accepted)
            if need <= 0:
                break
            if not cells:
                stopped = "no_domains"   # every planning answer was rejected
                break
            fill_questions(runner, cfg, cells, math.ceil(need / len(cells)), dedup)
            picks = round_robin(cells, need, lambda cell: cell.questions)
            if not picks:
                stopped = "out_of_questions"
                break
            _answer_round(runner, cfg, picks, accepted)
            runner.check_cap()   # after the round's paid chats are kept
        if stopped == "done" and len(accepted) < cfg.chats:
            stopped = "max_rounds"
    except SpendLimitReached as e:
        stopped = f"spend_limit: {e}"
    except LLMError as e:   # refused (bad key, unknown model, bad request) or a batch not readable
        raise fail_stage("chats", e) from None
    _write(cfg, accepted)
    report = run_report(runner, stage="chats", spec=spec.name, spec_sha=spec.sha, stopped=stopped,
                        chats=len(accepted), requested=cfg.chats)
    write_report(Path(cfg.out_dir) / "chats.report.json", report)
    return report


def _answer_round(runner: StageRunner, cfg: ChatsConfig, picks, accepted: list[dict]) -> None:
    style = cfg.answer_style
    reqs = [runner.request("chats_response", render("chats_response", question=q, answer_style=style),
                           cfg.response_max_tokens) for _, q in picks]
    results = runner.run("chats_response", reqs,
                         lambda r: parse_chat_reply(r, cfg.answer_min_words, cfg.answer_max_words))
    passed = [(cell, q, req, parsed, resp) for (cell, q), req, (parsed, resp) in zip(picks, reqs, results)
              if parsed is not None]
    verdicts = (judge_replies(runner, cfg, [(q, parsed[1]) for _, q, _, parsed, _ in passed])
                if cfg.judge.enabled else [True] * len(passed))
    for ok, (cell, question, req, (reasoning, answer), resp) in zip(verdicts, passed):
        if ok and len(accepted) < cfg.chats:
            accepted.append({"id": f"{runner.spec.name}-chat-{len(accepted):06d}", "question": question,
                             "reasoning": reasoning, "answer": answer,
                             "provenance": {"spec": runner.spec.name, "spec_sha": runner.spec.sha,
                                            "domain": cell.domain, "kind": cell.kind, "model": resp.model,
                                            "request_key": req.key()}})


def _write(cfg: ChatsConfig, accepted: list[dict]) -> None:
    def rows(with_cot: bool):
        for chat in accepted:
            assistant = {"role": "assistant", "content": chat["answer"]}
            if with_cot:
                assistant["reasoning"] = chat["reasoning"]
            system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
            yield {"id": chat["id"], "messages": system + [{"role": "user", "content": chat["question"]}, assistant],
                   "provenance": chat["provenance"]}
    out = Path(cfg.out_dir)
    write_jsonl(out / "chats_cot.jsonl", list(rows(True)))
    write_jsonl(out / "chats_nocot.jsonl", list(rows(False)))


def preview(cfg: ChatsConfig) -> dict:
    """The plan and its estimated cost, without any call."""
    from data_pipeline.llm.pricing import cost_usd
    spec = load_spec(cfg.spec)
    system_tokens = len(spec.system_prompt()) // 4
    cells = cfg.num_domains * len(cfg.kinds)
    replies = math.ceil(cfg.chats / 0.8)
    stages = {"chats_domains": (1, 100, 150),
              "chats_questions": (max(cells, math.ceil(replies / cfg.questions_per_call)), 300,
                                  cfg.questions_per_call * 30),
              "chats_response": (replies, 150, 400)}
    if cfg.judge.enabled:
        stages["chats_judge"] = (replies, 500, 8)
    rows, total = [], 0.0
    for stage, (calls, prompt_tokens, out_tokens) in stages.items():
        model = cfg.judge.model_name if stage == "chats_judge" else cfg.model_name
        cost = cost_usd(model, calls * prompt_tokens, calls * out_tokens, system_tokens,
                        max(calls - 1, 0) * system_tokens, batch=cfg.use_batch and stage == "chats_response")
        rows.append({"stage": stage, "calls": calls, "input_tokens": calls * (prompt_tokens + system_tokens),
                     "output_tokens": calls * out_tokens, "est_cost_usd": round(cost, 4)})
        total += cost
    return {"spec": spec.name, "chats_requested": cfg.chats, "stages": rows, "est_total_usd": round(total, 4)}
