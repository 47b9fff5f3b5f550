"""A local stand-in for the Anthropic Messages and Message Batches API, for tests.

A real HTTP server on 127.0.0.1 (stdlib `http.server` in a thread, ephemeral port) that
the real `anthropic` SDK talks to through `base_url`; nothing in the client is patched.

    with fake_anthropic_server(responder) as base_url:
        cfg = LLMConfig(backend="anthropic", base_url=base_url, ...)

`responder(request_json) -> str | FakeReply` scripts each answer from the request body.
A FakeReply can also script faults: an HTTP error status (429, 529, 500, ...), a delay
(for client timeouts), a stop_reason (max_tokens), or a batch outcome (errored/expired).
The yielded base_url is a `str` that also carries the server state: `base_url.calls`
counts requests per endpoint, `base_url.message_requests` keeps every /v1/messages body.
The server also answers OpenAI-style /v1/chat/completions with the same responder, for
the OpenAI-compatible backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


@dataclasses.dataclass
class FakeReply:
    text: str = ""
    status: int = 200                 # an HTTP error status scripts a failed call
    delay_s: float = 0.0              # sleep before answering (client timeouts)
    stop_reason: str = "end_turn"
    batch_result: str = "succeeded"   # in a batch: "succeeded" | "errored" | "expired"
    retry_after_ms: int | None = None
    content: list | None = None       # raw content blocks instead of one text block


def count_tokens(text: str) -> int:
    """A deterministic stand-in for the tokenizer: about 4 characters per token."""
    return max(1, len(text) // 4)


def _system_text(body: dict) -> tuple[str, bool]:
    system = body.get("system")
    if system is None:
        return "", False
    if isinstance(system, str):
        return system, False
    text = "".join(block.get("text", "") for block in system)
    cached = any("cache_control" in block for block in system)
    return text, cached


def _messages_text(body: dict) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(block.get("text", "") for block in content)
    return "\n".join(parts)


class FakeAnthropic:
    """Server state: scripted responder, prompt cache, batches, call counts."""

    def __init__(self, responder: Callable[[dict], "str | FakeReply"], batch_polls_until_end: int = 1):
        self.responder = responder
        self.batch_polls_until_end = batch_polls_until_end
        self.calls: Counter = Counter()
        self.message_requests: list[dict] = []
        self.batches: dict[str, dict] = {}
        self._cache: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.base_url = ""

    # -- answers -----------------------------------------------------------------------
    def reply_for(self, body: dict) -> FakeReply:
        reply = self.responder(body)
        return FakeReply(text=reply) if isinstance(reply, str) else reply

    def usage_for(self, body: dict, reply: FakeReply) -> dict:
        system, cacheable = _system_text(body)
        rest = count_tokens(_messages_text(body))
        usage = {"input_tokens": rest, "output_tokens": count_tokens(reply.text),
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if not system:
            return usage
        system_tokens = count_tokens(system)
        if not cacheable:
            usage["input_tokens"] += system_tokens
            return usage
        digest = hashlib.sha256((body.get("model", "") + system).encode()).hexdigest()
        with self._lock:
            hit = digest in self._cache
            self._cache.add(digest)
        usage["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = system_tokens
        return usage

    def message_for(self, body: dict, reply: FakeReply) -> dict:
        return {"id": f"msg_{next(self._ids):06d}", "type": "message", "role": "assistant",
                "model": body.get("model", "fake"),
                "content": reply.content if reply.content is not None else [{"type": "text", "text": reply.text}],
                "stop_reason": reply.stop_reason, "stop_sequence": None,
                "usage": self.usage_for(body, reply)}

    # -- batches -----------------------------------------------------------------------
    def create_batch(self, body: dict) -> dict:
        batch_id = f"msgbatch_{next(self._ids):06d}"
        results = []
        for item in body["requests"]:
            reply = self.reply_for(item["params"])
            if reply.batch_result == "succeeded":
                result = {"type": "succeeded", "message": self.message_for(item["params"], reply)}
            elif reply.batch_result == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "scripted batch item error"}}}
            else:
                result = {"type": reply.batch_result}
            results.append({"custom_id": item["custom_id"], "result": result})
        with self._lock:
            self.batches[batch_id] = {"results": results, "polls": 0, "canceled": False}
        return self.batch_json(batch_id)

    def cancel_batch(self, batch_id: str) -> None:
        """The batch ends at once; its second half counts as not yet processed (canceled)."""
        with self._lock:
            batch = self.batches[batch_id]
            batch["canceled"] = True
            results = batch["results"]
            for item in results[len(results) // 2:]:
                item["result"] = {"type": "canceled"}

    def batch_json(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        ended = batch["canceled"] or batch["polls"] >= self.batch_polls_until_end
        counts = Counter(r["result"]["type"] for r in batch["results"])
        n = len(batch["results"])
        return {
            "id": batch_id, "type": "message_batch", "created_at": "2026-01-01T00:00:00Z",
            "expires_at": "2026-01-02T00:00:00Z", "archived_at": None,
            "cancel_initiated_at": "2026-01-01T00:00:01Z" if batch["canceled"] else None,
            "ended_at": "2026-01-01T00:01:00Z" if ended else None,
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else n, "succeeded": counts["succeeded"] if ended else 0,
                "errored": counts["errored"] if ended else 0,
                "canceled": counts["canceled"] if ended else 0,
                "expired": counts["expired"] if ended else 0},
            "results_url": f"{self.base_url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }


def _message_events(message: dict) -> bytes:
    """A text message as the Messages API streams it (server-sent events), for clients that
    stream long requests (Inspect's Anthropic provider)."""
    text = "".join(block.get("text", "") for block in message["content"])
    events = [
        {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
         "usage": {"output_tokens": message["usage"]["output_tokens"]}},
        {"type": "message_stop"}]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _make_handler(state: FakeAnthropic):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, payload, content_type="application/json", headers=None):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", f"req_{next(state._ids)}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def _error(self, status: int, message: str, headers=None):
            error_type = ERROR_TYPES.get(status, "api_error")
            self._send(status, {"type": "error", "error": {"type": error_type, "message": message}},
                       headers=headers)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def _reply_or_fault(self, body: dict) -> FakeReply | None:
            reply = state.reply_for(body)
            if reply.delay_s:
                time.sleep(reply.delay_s)
            if reply.status != 200:
                headers = {"x-should-retry": "true"} if reply.status in (429, 500, 529) else {}
                if reply.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(reply.retry_after_ms)
                self._error(reply.status, f"scripted HTTP {reply.status}", headers)
                return None
            return reply

        def do_POST(self):
            body = self._body()
            path = self.path.split("?")[0]
            has_key = self.headers.get("x-api-key") or self.headers.get("Authorization")
            if path.startswith("/v1/messages") and not has_key:
                self._error(401, "missing API key")
                return
            if path == "/v1/messages":
                state.calls["messages"] += 1
                state.message_requests.append(body)
                reply = self._reply_or_fault(body)
                if reply is not None and body.get("stream"):
                    self._send(200, _message_events(state.message_for(body, reply)), "text/event-stream")
                elif reply is not None:
                    self._send(200, state.message_for(body, reply))
            elif path == "/v1/messages/batches":
                state.calls["batch_create"] += 1
                self._send(200, state.create_batch(body))
            elif path.startswith("/v1/messages/batches/") and path.endswith("/cancel"):
                state.calls["batch_cancel"] += 1
                batch_id = path.split("/")[4]
                state.cancel_batch(batch_id)
                self._send(200, state.batch_json(batch_id))
            elif path == "/v1/chat/completions":
                state.calls["chat_completions"] += 1
                anthropic_like = {"model": body.get("model"), "messages": body.get("messages", [])}
                reply = self._reply_or_fault(anthropic_like)
                if reply is not None:
                    finish = "length" if reply.stop_reason == "max_tokens" else "stop"
                    usage = state.usage_for(anthropic_like, reply)
                    self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                                     "choices": [{"index": 0, "finish_reason": finish,
                                                  "message": {"role": "assistant", "content": reply.text}}],
                                     "usage": {"prompt_tokens": usage["input_tokens"],
                                               "completion_tokens": usage["output_tokens"],
                                               "total_tokens": usage["input_tokens"] + usage["output_tokens"]}})
            else:
                self._error(404, f"no route {path}")

        def do_GET(self):
            path = self.path.split("?")[0]
            parts = path.strip("/").split("/")
            if len(parts) >= 4 and parts[:3] == ["v1", "messages", "batches"] and parts[3] in state.batches:
                batch_id = parts[3]
                if len(parts) == 4:
                    state.calls["batch_retrieve"] += 1
                    with state._lock:
                        state.batches[batch_id]["polls"] += 1
                    self._send(200, state.batch_json(batch_id))
                    return
                if len(parts) == 5 and parts[4] == "results":
                    state.calls["batch_results"] += 1
                    lines = "".join(json.dumps(r) + "\n" for r in state.batches[batch_id]["results"])
                    self._send(200, lines.encode(), content_type="application/binary")
                    return
            self._error(404, f"no route {path}")

    return Handler


class ServerURL(str):
    """The server's base URL; attribute access reaches the server state (`.calls`, ...)."""

    state: FakeAnthropic

    def __getattr__(self, name):
        return getattr(self.state, name)


@contextlib.contextmanager
def fake_anthropic_server(responder: Callable[[dict], "str | FakeReply"],
                          batch_polls_until_end: int = 1) -> Iterator[ServerURL]:
    """Run the fake API on an ephemeral port; yields its base URL (with `.calls`, ...)."""
    state = FakeAnthropic(responder, batch_polls_until_end)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    url = ServerURL(state.base_url)
    url.state = state
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
