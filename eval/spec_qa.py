"""Spec QA (in distribution): open questions about the model's values and beliefs,
answered by the model and graded 1-10 against the spec by a Claude judge with a rubric
(eval/data/prompts/spec_qa_judge.md); mean and bootstrap CI per category.

Files in `out_dir`: answers.jsonl, grades.jsonl (append-only, resumable
per question and sample), summary.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from eval.backends import Backend, BackendConfig
from eval.judge import JudgeConfig, ask, load_prompt, parse_score, tag
from eval.records import append_jsonl, read_jsonl, write_json
from eval.stats import mean_summary
from eval.value_generalization import REPO_ROOT
from msm_jax import distributed
from msm_jax.errors import UserError
from msm_jax.sampling import SamplingParams

DEFAULT_QUESTIONS = Path(__file__).resolve().parent / "data" / "spec_qa" / "cheese_questions.jsonl"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecQAConfig:
    backend: BackendConfig
    judge: JudgeConfig = JudgeConfig()
    out_dir: str
    spec: str                                # the Model Spec (Markdown) answers are graded against
    questions: str = str(DEFAULT_QUESTIONS)
    samples_per_question: int = 1
    sampling: SamplingParams = SamplingParams(max_tokens=512, temperature=0.7)
    system_prompt: Optional[str] = None

    def validate(self) -> None:
        if not self.spec:
            raise ValueError("spec is required: the Model Spec file the answers are graded against")
        if self.samples_per_question < 1:
            raise ValueError("samples_per_question must be >= 1")


def _resolve(path: str) -> Path:
    p = Path(path)
    return REPO_ROOT / p if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists() else p


def load_questions(path: str) -> list[dict]:
    p = _resolve(path)
    if not p.exists():
        raise UserError(f"{p}: question file not found")
    rows = read_jsonl(p)
    for n, row in enumerate(rows, 1):
        if not {"id", "category", "question"} <= set(row):
            raise UserError(f"{p}: question {n}: needs keys id, category, question")
    return rows


def answer_key(question: dict, sample: int) -> str:
    return f"{question['id']}#{sample}"


def evaluate(backend: Optional[Backend], cfg: SpecQAConfig, client=None) -> Optional[dict]:
    """Answer what is missing (every process samples its share), then grade and summarize on
    the leader alone (None elsewhere), so no judge call is paid twice."""
    spec_path = _resolve(cfg.spec)
    if not spec_path.is_file():
        raise UserError(f"{spec_path}: spec file not found (spec_qa.spec)")
    spec = spec_path.read_text()
    questions = load_questions(cfg.questions)
    out = Path(cfg.out_dir)
    answers_path, grades_path = out / "answers.jsonl", out / "grades.jsonl"
    wanted = [(q, s) for q in questions for s in range(cfg.samples_per_question)]
    have = set(distributed.broadcast_json(
        [r["key"] for r in read_jsonl(answers_path, tolerate_torn_tail=True)] if distributed.is_leader() else None,
        "spec-qa: answers already saved"))
    todo = [(q, s) for q, s in wanted if answer_key(q, s) not in have]
    if todo and backend is not None:
        chats = []
        for q, _ in todo:
            system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
            chats.append(system + [{"role": "user", "content": q["question"]}])
        by_sample: dict[int, list[int]] = {}
        for i, (_, s) in enumerate(todo):
            by_sample.setdefault(s, []).append(i)
        merged: dict[int, str] = {}
        for s, idx in sorted(by_sample.items()):  # one seed per sample index
            params = dataclasses.replace(cfg.sampling, seed=cfg.sampling.seed + s)
            merged.update(zip(idx, backend.generate([chats[i] for i in idx], params)))
        if distributed.is_leader():
            append_jsonl(answers_path, [{"key": answer_key(q, s), "id": q["id"], "category": q["category"],
                                         "sample": s, "question": q["question"], "backend": backend.name,
                                         "answer": merged[i]} for i, (q, s) in enumerate(todo)])
    if not distributed.is_leader():
        return None
    keys = {answer_key(q, s) for q, s in wanted}
    answers = [a for a in read_jsonl(answers_path, tolerate_torn_tail=True) if a["key"] in keys]
    graded = {r["key"] for r in read_jsonl(grades_path, tolerate_torn_tail=True)}
    to_grade = [a for a in answers if a["key"] not in graded]
    template = load_prompt("spec_qa_judge.md")
    prompts = [template.format(category=a["category"], question=a["question"], answer=a["answer"]) for a in to_grade]
    # the spec goes in the system prompt, which the LLM layer marks for prompt caching
    system = load_prompt("spec_qa_judge_system.md").format(spec=spec)
    replies = ask(cfg.judge, prompts, stage="eval-spec-qa", system=system, client=client)
    append_jsonl(grades_path, [{"key": a["key"], "category": a["category"], "judge_model": cfg.judge.model_id,
                                "judge_text": r, "judge_reasoning": tag(r, "reasoning"), "score": parse_score(r)}
                               for a, r in zip(to_grade, replies) if r is not None])
    grades = [g for g in read_jsonl(grades_path, tolerate_torn_tail=True) if g["key"] in keys]
    scored = [g for g in grades if g["score"] is not None]
    summary = {"eval": "spec_qa", "backend": answers[0]["backend"] if answers else None,
               "judge_model": cfg.judge.model_id, "spec": str(cfg.spec),
               "overall": mean_summary([g["score"] for g in scored]),
               "per_category": {c: mean_summary([g["score"] for g in scored if g["category"] == c])
                                for c in sorted({g["category"] for g in scored})},
               "unparsed_judge_answers": len(grades) - len(scored), "ungraded": len(keys) - len(grades)}
    write_json(out / "summary.json", summary)
    return summary
