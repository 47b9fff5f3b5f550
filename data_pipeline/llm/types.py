"""The request/answer records every backend speaks, and the content address of a request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class Usage:
    """Token counts as the API reports them; cache reads/writes are separate from input."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Usage":
        d = d or {}
        return cls(**{f.name: int(d.get(f.name) or 0) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMRequest:
    """One call. `metadata` is not sent: `stage` labels spend, `variant` asks for another
    sample of the same prompt (it is part of the content address), the rest is free."""

    model: str
    messages: list[dict]
    system: str | None = None
    max_tokens: int
    temperature: float = 1.0
    cache_system: bool = True
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def stage(self) -> str:
        return str(self.metadata.get("stage", "default"))

    def key(self) -> str:
        """The content address: everything that changes the answer, nothing else."""
        return request_key(self)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request_key(req: LLMRequest) -> str:
    return sha256(_canonical({
        "model": req.model, "system": req.system, "messages": req.messages,
        "max_tokens": req.max_tokens, "temperature": req.temperature,
        "variant": req.metadata.get("variant", 0)}))


@dataclasses.dataclass(frozen=True)
class LLMResponse:
    text: str
    stop_reason: str
    usage: Usage
    model: str
    from_store: bool = False

    @property
    def truncated(self) -> bool:
        return self.stop_reason == "max_tokens"

    def to_dict(self) -> dict:
        return {"text": self.text, "stop_reason": self.stop_reason, "usage": self.usage.to_dict(),
                "model": self.model}

    @classmethod
    def from_dict(cls, d: dict, from_store: bool = False) -> "LLMResponse":
        return cls(text=d["text"], stop_reason=d["stop_reason"], usage=Usage.from_dict(d.get("usage")),
                   model=d.get("model", ""), from_store=from_store)


@dataclasses.dataclass(frozen=True)
class LLMFailure:
    """A request that got no answer (after retries and fallbacks); never stored."""

    error: str
    key: str
    kind: str = "error"   # "error" | "missing" (replay) | "spend_limit"


class LLMError(Exception):
    """A call that failed for good; the message never contains the API key."""


class TransientError(LLMError):
    """Worth retrying (429, 5xx, overloaded, timeouts, dropped connections, a 200 whose body
    cannot be read). `billed`: the server answered (so charged) but the answer is unreadable."""

    def __init__(self, message: str, retry_after_s: float | None = None, billed: bool = False):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.billed = billed


class FatalAPIError(LLMError):
    """An error retrying cannot fix (bad key, no permission, unknown model, bad request):
    the stage stops at once. The message names the model or the key's variable, never the key."""


class MissingFromStore(LLMError):
    """The replay backend was asked for an answer the store does not hold."""


class SpendLimitReached(LLMError):
    """`max_spend_usd` is reached; everything received so far is in the store."""
