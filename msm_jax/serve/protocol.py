"""OpenAI's wire format: request bodies -> `Job`s, generations -> response bodies.

Only what the chat and completions endpoints need for evals: messages rendered with the
model's chat template, temperature / top_p / max_tokens / stop / seed / n, streaming as
server-sent events. Errors carry OpenAI's `{"error": {message, type, param, code}}` shape
so SDKs and Inspect read them as they read OpenAI's own.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, Optional

from msm_jax.sampling import Generation, SamplingParams, finish_generation

MAX_STOPS = 4
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """A request the server refuses; `body()` is what the client receives."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    model_name: str
    max_len: int               # prompt + completion tokens the model may see
    default_max_tokens: int    # completion tokens when a request gives none
    max_n: int = 16


@dataclasses.dataclass
class Job:
    """One prompt and the `n` completions asked of it. `seed` None: any seed will do, so the
    job may share a batch (and its random key) with other jobs."""

    prompt: list[int]
    params: SamplingParams
    n: int = 1
    seed: Optional[int] = None


@dataclasses.dataclass
class Request:
    kind: str                  # "chat" | "completion"
    jobs: list[Job]
    stream: bool
    include_usage: bool


def _field(body: dict, name: str, types, default, check: Callable[[Any], bool] = lambda v: True, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ApiError(400, f"'{name}' must be {what}", param=name)
    if not isinstance(value, types) or not check(value):
        raise ApiError(400, f"'{name}' must be {what}, got {value!r}", param=name)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    return tuple(s for s in stops if s)


def _check_model(body: dict, limits: Limits) -> None:
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "'model' is required (a string)", param="model")
    if model != limits.model_name:
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{limits.model_name}'",
                       param="model", code="model_not_found")


def _job(body: dict, prompt: list[int], limits: Limits, where: str) -> Job:
    """Sampling options of one prompt, checked against the model's context length."""
    if not prompt:
        raise ApiError(400, f"'{where}' renders to an empty prompt", param=where)
    room = limits.max_len - len(prompt)
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _field({"max_tokens": asked}, "max_tokens", int, None, lambda v: v >= 1, "a positive integer")
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, room)
    if room < 1 or max_tokens > room:
        raise ApiError(400, f"This model's maximum context length is {limits.max_len} tokens. However, you requested "
                            f"{len(prompt) + max(max_tokens, 1)} tokens ({len(prompt)} in the {where}, "
                            f"{max(max_tokens, 1)} in the completion). Please reduce the length of the {where} "
                            "or completion.", param=where, code="context_length_exceeded")
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=float(_field(body, "temperature", (int, float), 1.0, lambda v: 0 <= v <= 2, "in [0, 2]")),
        top_p=float(_field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1, "in (0, 1]")),
        stop=_stops(body))
    n = _field(body, "n", int, 1, lambda v: 1 <= v <= limits.max_n, f"an integer in [1, {limits.max_n}]")
    seed = _field(body, "seed", int, None, lambda v: True, "an integer")
    return Job(prompt=prompt, params=params, n=n, seed=seed)


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = _field(body, "stream", bool, False, what="a boolean")
    options = _field(body, "stream_options", dict, {}, what="an object")
    return stream, bool(options.get("include_usage")) if stream else False


def _message_text(msg: Any, i: int) -> dict:
    if not isinstance(msg, dict):
        raise ApiError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
    role = msg.get("role")
    if role not in ROLES:
        raise ApiError(400, f"messages[{i}].role {role!r} is not supported (use one of {', '.join(ROLES)})",
                       param=f"messages[{i}].role")
    content = msg.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}].content")
        content = "".join(p["text"] for p in content)
    elif not isinstance(content, str):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                       param=f"messages[{i}].content")
    return {"role": ROLES[role], "content": content}


def parse_chat(body: Any, limits: Limits, render: Callable[[list[dict]], list[int]]) -> Request:
    """A /v1/chat/completions body; `render` turns a chat into prompt token ids."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_model(body, limits)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    chat = [_message_text(m, i) for i, m in enumerate(messages)]
    if not any(m["role"] == "user" for m in chat):
        raise ApiError(400, "'messages' needs at least one user message", param="messages")
    stream, usage = _stream_options(body)
    return Request("chat", [_job(body, render(chat), limits, "messages")], stream, usage)


def parse_completion(body: Any, limits: Limits, encode: Callable[[str], list[int]]) -> Request:
    """A /v1/completions body: `prompt` is a string, a list of strings, token ids, or lists of them."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_model(body, limits)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [encode(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = [encode(p) for p in prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise ApiError(400, "'prompt' must be a string, a list of strings, or token ids", param="prompt")
    if body.get("echo") or body.get("logprobs") or body.get("best_of", 1) not in (1, None):
        raise ApiError(400, "echo, logprobs and best_of are not supported by msm serve")
    stream, usage = _stream_options(body)
    return Request("completion", [_job(body, p, limits, "prompt") for p in prompts], stream, usage)


def finish(gen: Generation, params: SamplingParams, decode: Callable[[list[int]], str]) -> tuple[str, str, int]:
    """(text, OpenAI finish_reason, completion tokens) of one row that may have been decoded
    with a larger max_tokens than its request asked for (batch-mates wanted more)."""
    tokens = gen.tokens[:params.max_tokens]
    reason = "length" if len(gen.tokens) > params.max_tokens else gen.finish_reason
    text = decode(tokens)
    cuts = [text.find(s) for s in params.stop if s in text]
    if cuts:
        text, reason = text[:min(cuts)], "stop"
    return text, ("length" if reason == "length" else "stop"), len(tokens)


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str
    tokens: int


def usage(jobs: list[Job], choices: list[Choice]) -> dict:
    prompt = sum(len(j.prompt) for j in jobs)
    completion = sum(c.tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def response(req: Request, model: str, choices: list[Choice]) -> dict:
    """The whole (non-streamed) response body."""
    head = _head(req, model)
    if req.kind == "chat":
        body = [{"index": c.index, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                 "finish_reason": c.finish_reason} for c in choices]
    else:
        body = [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for c in choices]
    return {**head, "object": "chat.completion" if req.kind == "chat" else "text_completion", "choices": body,
            "usage": usage(req.jobs, choices)}


def partial_text(tokens: list[int], params: SamplingParams, eos_ids: set[int],
                 decode: Callable[[list[int]], str]) -> str:
    """What can be streamed of a row that is still decoding: the part its final text (see
    `finish`) will start with. A row that reached an end-of-sequence id or a stop string is
    final; otherwise trailing characters that later tokens may still change (an unfinished
    UTF-8 sequence, whitespace a tokenizer may clean up, the start of a stop string) are held back."""
    gen = finish_generation(tokens, params, eos_ids, decode)
    if gen.finish_reason != "length":
        return gen.text
    text = gen.text.rstrip("\ufffd").rstrip()
    hold = max((len(s) - 1 for s in params.stop), default=0)
    return text[:max(0, len(text) - hold)]


class StreamChunks:
    """The server-sent event payloads of one streamed response (one id and creation time)."""

    def __init__(self, req: Request, model: str):
        self.req, self.head = req, _head(req, model)
        self.obj = "chat.completion.chunk" if req.kind == "chat" else "text_completion"

    def _chunk(self, index: int, delta: Optional[str], finish_reason: Optional[str], role: bool = False) -> dict:
        if self.req.kind == "chat":
            d = {"role": "assistant", "content": ""} if role else ({"content": delta} if delta is not None else {})
            choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "object": self.obj, "choices": [choice]}

    def role(self, index: int) -> dict:
        """A chat choice's opening chunk (chat streams only)."""
        return self._chunk(index, None, None, role=True)

    def delta(self, index: int, text: str) -> dict:
        return self._chunk(index, text, None)

    def finish(self, index: int, reason: str) -> dict:
        return self._chunk(index, None, reason)

    def usage(self, choices: list[Choice]) -> dict:
        return {**self.head, "object": self.obj, "choices": [], "usage": usage(self.req.jobs, choices)}


def _head(req: Request, model: str) -> dict:
    prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}


def models(name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "msm"}]}
