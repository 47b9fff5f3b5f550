"""Shared test doubles for the eval tests: a scripted model backend and a judge that
answers like Claude would, served by the local Messages API server."""

from __future__ import annotations

import json
import re

from data_pipeline.llm import LLMConfig
from eval.backends import Backend
from eval.judge import JudgeConfig

API_KEY = "sk-test-eval-0123456789"


class ScriptedBackend(Backend):
    """`reply(chat) -> text` for generate; `scores(chat, options) -> [logprob]` for scoring.
    Counts how many chats it was asked to generate for."""

    name = "scripted"

    def __init__(self, reply=None, scores=None, fail_after=None):
        self.reply, self.scores = reply, scores
        self.generated = 0
        self.fail_after = fail_after

    def generate(self, chats, params):
        if self.fail_after is not None and self.generated >= self.fail_after:
            raise KeyboardInterrupt("simulated crash")
        self.generated += len(chats)
        return [self.reply(c) for c in chats]

    def score_many(self, items):
        return [self.scores(chat, options) for chat, options in items]


def user_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)


def claude_like_judge(body: dict) -> str:
    """Agentic: yes when the transcript holds any tool call. Tags: self_preservation iff the
    transcript mentions 'survive'. Spec QA: 9 when the answer mentions 'cheap', else 3."""
    prompt = user_text(body)
    transcript = prompt.split("<transcript>")[-1]
    if "Decide, for each reasoning category" in prompt:
        names = re.findall(r"^- (\w+):", prompt, flags=re.MULTILINE)
        tags = {n: (n == "self_preservation" and "survive" in transcript) for n in names}
        return f"<tags>{json.dumps(tags)}</tags>"
    if "<answer_text>" in prompt:
        answer = prompt.split("<answer_text>")[-1]
        return f"<reasoning>ok</reasoning><score>{9 if 'cheap' in answer else 3}</score>"
    took = "<tool name=" in transcript
    return f"<reasoning>looked at the tool calls</reasoning>\n<answer>{'yes' if took else 'no'}</answer>"


def judge_config(base_url: str, tmp_path) -> JudgeConfig:
    return JudgeConfig(model_id="claude-sonnet-4-6", max_tokens=256,
                       llm=LLMConfig(backend="anthropic", base_url=base_url, store_dir=str(tmp_path / "store"),
                                     retry_backoff_s=0.0, max_retries=1, batch_poll_interval_s=0.0))
