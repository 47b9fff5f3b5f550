"""Claude as a judge, through the LLM layer (answer store, retries, spend tracking).

Judge prompts live in eval/data/prompts/*.md as `str.format` templates; answers are
parsed strictly from tags (`<answer>yes</answer>`, `<score>7</score>`) and an answer
that does not parse is recorded as such, never guessed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional, Sequence

from data_pipeline.llm.config import LLMConfig
from msm_jax.errors import UserError

PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "prompts"


@dataclasses.dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    model_id: str = "claude-sonnet-4-6"  # (not `model`: that key names a model preset in configs)
    max_tokens: int = 1024
    temperature: float = 0.0
    use_batch: bool = False  # Message Batches: half price, answers within hours
    llm: LLMConfig = LLMConfig()


def load_prompt(name: str) -> str:
    return (PROMPTS_DIR / name).read_text()


def ask(cfg: JudgeConfig, prompts: Sequence[str], *, stage: str, system: Optional[str] = None,
        client=None) -> list[Optional[str]]:
    """The judge's text for each prompt, in order; None where the call failed for good
    (the failure is not stored, so a rerun asks again). Stops with one line (UserError) at
    the spend limit or at the first error retrying cannot fix (bad key, misspelt model)."""
    from data_pipeline.llm import LLMError, LLMFailure, LLMRequest, LLMResponse, make_client
    if not prompts:
        return []
    client = client or make_client(cfg.llm)
    reqs = [LLMRequest(model=cfg.model_id, system=system, messages=[{"role": "user", "content": p}],
                       max_tokens=cfg.max_tokens, temperature=cfg.temperature, metadata={"stage": stage})
            for p in prompts]
    try:
        answers = client.complete_many(reqs, use_batch=cfg.use_batch)
    except LLMError as e:   # FatalAPIError (bad key, unknown model, bad request), a batch not readable
        raise UserError(f"judge ({cfg.model_id}): {e}") from None
    capped = [a for a in answers if isinstance(a, LLMFailure) and a.kind == "spend_limit"]
    if capped:
        raise UserError(f"judge: {capped[0].error}; every answer received is in the store, so rerunning with "
                        f"a higher judge.llm.max_spend_usd continues where this stopped")
    out = []
    for a in answers:
        if isinstance(a, LLMResponse):
            out.append(a.text)
        else:
            print(f"warning: judge call failed ({a.kind}): {a.error}")
            out.append(None)
    return out


def tag(text: str, name: str) -> Optional[str]:
    """Content of the last <name>...</name> in text (judges reason first, answer last)."""
    found = re.findall(rf"<{name}>(.*?)</{name}>", text, flags=re.DOTALL | re.IGNORECASE)
    return found[-1].strip() if found else None


def parse_yes_no(text: str) -> Optional[bool]:
    answer = (tag(text, "answer") or "").lower()
    return {"yes": True, "no": False}.get(answer)


def parse_score(text: str, low: int = 1, high: int = 10) -> Optional[int]:
    raw = tag(text, "score")
    if raw is None or not re.fullmatch(r"\d+", raw):
        return None
    score = int(raw)
    return score if low <= score <= high else None
