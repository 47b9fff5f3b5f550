"""Reading documents and chats from JSONL, every problem reported as `file:line: what`.

Documents: `{"text": str, ...metadata}`. Chats: `{"messages": [{"role", "content",
"reasoning"?}], ...}` with an optional system message first, then user and assistant
turns alternating, starting with user and ending with assistant. Reasoning comes from
a `reasoning` field or inline `<think>...</think>` at the start of the content.
With `skip_bad`, bad lines are counted (per reason) instead of raising.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from data_pipeline.chat_templates import Message, split_inline_reasoning
from msm_jax.errors import UserError

T = TypeVar("T")


class BadLine(ValueError):
    """A line that cannot be used: a message for the user and a short reason for counting."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass
class ReadStats:
    lines: int = 0
    records: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    metadata_keys: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def to_dict(self) -> dict:
        return {"lines": self.lines, "records": self.records, "skipped": sum(self.skipped.values()),
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "metadata_keys": dict(sorted(self.metadata_keys.items()))}


def parse_document(record: dict) -> str:
    text = record.get("text")
    if not isinstance(text, str):
        raise BadLine("missing string field 'text'", "missing text")
    if not text:
        raise BadLine("empty 'text'", "empty text")
    return text


def parse_chat(record: dict) -> list[Message]:
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadLine("missing non-empty list field 'messages'", "missing messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadLine(f"messages[{i}]: expected an object with string 'content'", "bad message")
        role, content, reasoning = m.get("role"), m["content"], m.get("reasoning")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            raise BadLine(f"messages[{i}].reasoning: expected a string, on an assistant turn only", "bad reasoning")
        if role == "assistant" and reasoning is None:
            content, reasoning = split_inline_reasoning(content)
        elif "<think>" in content or "</think>" in content:
            if role != "assistant":
                raise BadLine(f"messages[{i}]: <think> outside an assistant turn", "bad reasoning")
            raise BadLine(f"messages[{i}]: both a 'reasoning' field and inline <think> in the content",
                          "bad reasoning")
        messages.append(Message(role=role, content=content, reasoning=reasoning or None))
    check_role_order([m.role for m in messages])
    return messages


def check_role_order(roles: list[Optional[str]]) -> None:
    body = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(body):
        index = i + len(roles) - len(body)
        expected = "user" if i % 2 == 0 else "assistant"
        if role not in ("system", "user", "assistant"):
            raise BadLine(f"messages[{index}]: unknown role {role!r} (expected system, user or assistant)",
                          "unknown role")
        if role != expected:
            raise BadLine(f"messages[{index}]: role {role!r} out of order (expected {expected!r}; "
                          f"an optional system message, then user/assistant turns alternating)", "role order")
    if not body or body[-1] != "assistant":
        raise BadLine("the chat must end with an assistant turn", "role order")


def read_jsonl(path: Path, parse: Callable[[dict], T], *, skip_bad: bool,
               stats: ReadStats) -> Iterator[tuple[int, T]]:
    """(line number, parse(record)) for each good line; `parse` raises BadLine on bad records."""
    try:
        f = open(path, "rb")  # decoded per line, so one non-UTF-8 line is one bad line
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            stats.lines += 1
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BadLine(f"not UTF-8 text (byte {raw[e.start]:#x} at column {e.start + 1})",
                                  "not UTF-8") from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BadLine(f"invalid JSON ({e.msg} at column {e.colno})", "invalid JSON") from None
                if not isinstance(record, dict):
                    raise BadLine("expected a JSON object", "not an object")
                item = parse(record)
            except BadLine as e:
                if not skip_bad:
                    raise UserError(f"{path}:{lineno}: {e} (use --skip-bad to skip and count bad lines)") from None
                stats.skipped[e.reason] += 1
                continue
            stats.records += 1
            stats.metadata_keys.update(k for k in record if k not in ("text", "messages"))
            yield lineno, item
