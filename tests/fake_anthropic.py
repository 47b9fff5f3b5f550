"""A local stand-in for the Anthropic Messages and Message Batches API, for tests.

A real HTTP server on 127.0.0.1 (stdlib `http.server` in a thread, ephemeral port) that
the real `anthropic` SDK talks to through `base_url`; nothing in the client is patched.

    with fake_anthropic_server(responder) as base_url:
        cfg = LLMConfig(backend="anthropic", base_url=base_url, ...)

`responder(request_json) -> str | FakeReply` scripts each answer from the request body.
A FakeReply can also script faults: an HTTP error status (429, 529, 500, ...), a delay
(for client timeouts), a stop_reason (max_tokens), a 200 whose body is not JSON
(`malformed`), or a batch outcome (errored/expired). Endpoint faults are queued with
`base_url.inject(endpoint, *faults)` (endpoint: messages, batch_create, batch_retrieve,
batch_results, batch_list; a fault: "malformed" = 200 with a body that is not JSON, "lost" =
the batch is created but the connection drops before the answer, "truncate" = half the
results stream then a closed connection, an int = that HTTP status, a callable = called
with the state before the call is served). `valid_key` makes any other key a 401.
The yielded base_url is a `str` that also carries the server state: `base_url.calls`
counts requests per endpoint, `base_url.message_requests` keeps every /v1/messages body,
`base_url.billed` every answer the server charged for ({"model", "usage", "batch", "request"}).
The server also answers OpenAI-style /v1/chat/completions with the same responder, for
the OpenAI-compatible backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
MALFORMED_BODY = b'{"id": "msg_torn", "type": "message", "content": [{"type": "te'   # cut mid-JSON


@dataclasses.dataclass
class FakeReply:
    text: str = ""
    status: int = 200                 # an HTTP error status scripts a failed call
    delay_s: float = 0.0              # sleep before answering (client timeouts)
    stop_reason: str = "end_turn"
    batch_result: str = "succeeded"   # in a batch: "succeeded" | "errored" | "expired"
    retry_after_ms: int | None = None
    content: list | None = None       # raw content blocks instead of one text block
    malformed: bool = False           # 200 (charged) with a body that is not JSON


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

    def __init__(self, responder: Callable[[dict], "str | FakeReply"], batch_polls_until_end: int = 1,
                 valid_key: str | None = None):
        self.responder = responder
        self.batch_polls_until_end = batch_polls_until_end
        self.valid_key = valid_key
        self.calls: Counter = Counter()
        self.message_requests: list[dict] = []
        self.billed: list[dict] = []
        self.faults: dict[str, list] = {}
        self.batches: dict[str, dict] = {}
        self._cache: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.base_url = ""

    def inject(self, endpoint: str, *faults) -> None:
        """Queue faults for the next calls of `endpoint` (see the module docstring)."""
        with self._lock:
            self.faults.setdefault(endpoint, []).extend(faults)

    def next_fault(self, endpoint: str):
        with self._lock:
            queue = self.faults.get(endpoint)
            fault = queue.pop(0) if queue else None
        if callable(fault):
            fault(self)
            return None
        return fault

    def bill(self, body: dict, usage: dict, batch: bool) -> None:
        """Record a charged answer; `request` identifies the request whichever API carried it."""
        request = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self.billed.append({"model": body.get("model", "fake"), "usage": usage, "batch": batch,
                                "request": request})

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
                self.bill(item["params"], result["message"]["usage"], batch=True)
            elif reply.batch_result == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "scripted batch item error"}}}
            else:
                result = {"type": reply.batch_result}
            results.append({"custom_id": item["custom_id"], "result": result})
        created = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        with self._lock:
            self.batches[batch_id] = {"results": results, "polls": 0, "canceled": False, "created_at": created}
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
            "id": batch_id, "type": "message_batch", "created_at": batch["created_at"],
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
        _pending = None   # a "truncate" fault taken by _endpoint_fault, served by the route

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

        def _drop(self, data: bytes = b"", length: int | None = None):
            """Close the connection: before any answer (a lost answer), or after `data` of a
            200 body announced as `length` bytes (a stream cut short)."""
            self.close_connection = True
            if length is None:
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/binary")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        def _endpoint_fault(self, endpoint: str) -> bool:
            """Serve a queued fault that replaces the whole answer; True if one was served.
            A "truncate" fault is left in `_pending` for the route to serve."""
            fault = state.next_fault(endpoint)
            if fault is None or fault == "truncate":
                self._pending = fault
                return False
            if fault == "malformed":
                self._send(200, MALFORMED_BODY)
            else:
                self._error(int(fault), f"scripted HTTP {fault}")
            return True

        def _key_refused(self) -> bool:
            key = self.headers.get("x-api-key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if not key or (state.valid_key is not None and key != state.valid_key):
                self._error(401, "invalid x-api-key")
                return True
            return False

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
            if path.startswith("/v1/messages") and self._key_refused():
                return
            if path == "/v1/messages":
                state.calls["messages"] += 1
                state.message_requests.append(body)
                if self._endpoint_fault("messages"):
                    return
                reply = self._reply_or_fault(body)
                if reply is not None:
                    message = state.message_for(body, reply)
                    state.bill(body, message["usage"], batch=False)
                    if reply.malformed:
                        self._send(200, MALFORMED_BODY)
                    elif body.get("stream"):
                        self._send(200, _message_events(message), "text/event-stream")
                    else:
                        self._send(200, message)
            elif path == "/v1/messages/batches":
                state.calls["batch_create"] += 1
                fault = state.next_fault("batch_create")
                if fault not in (None, "lost", "malformed"):
                    self._error(int(fault), f"scripted HTTP {fault}")
                    return
                batch = state.create_batch(body)   # created (and billed) whatever the client hears
                if fault == "lost":
                    self._drop()
                else:
                    self._send(200, MALFORMED_BODY if fault == "malformed" else batch)
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
            path, _, query = self.path.partition("?")
            parts = path.strip("/").split("/")
            if parts[:3] == ["v1", "messages", "batches"] and self._key_refused():
                return
            if parts == ["v1", "messages", "batches"]:
                state.calls["batch_list"] += 1
                if self._endpoint_fault("batch_list"):
                    return
                limit = int(urllib.parse.parse_qs(query).get("limit", ["20"])[0])
                with state._lock:
                    ids = list(state.batches)[::-1][:limit]   # newest first
                self._send(200, {"data": [state.batch_json(i) for i in ids], "has_more": len(state.batches) > limit,
                                 "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None})
                return
            if len(parts) >= 4 and parts[:3] == ["v1", "messages", "batches"] and parts[3] in state.batches:
                batch_id = parts[3]
                if len(parts) == 4:
                    state.calls["batch_retrieve"] += 1
                    if self._endpoint_fault("batch_retrieve"):
                        return
                    with state._lock:
                        state.batches[batch_id]["polls"] += 1
                    self._send(200, state.batch_json(batch_id))
                    return
                if len(parts) == 5 and parts[4] == "results":
                    state.calls["batch_results"] += 1
                    if self._endpoint_fault("batch_results"):
                        return
                    lines = "".join(json.dumps(r) + "\n" for r in state.batches[batch_id]["results"]).encode()
                    if self._pending == "truncate":
                        self._drop(lines[:len(lines) // 2], length=len(lines))
                    else:
                        self._send(200, lines, content_type="application/binary")
                    return
            self._error(404, f"no route {path}")

    return Handler


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client killed or gone mid-request (the kill tests) is not an error of the server."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ServerURL(str):
    """The server's base URL; attribute access reaches the server state (`.calls`, ...)."""

    state: FakeAnthropic

    def __getattr__(self, name):
        return getattr(self.state, name)


@contextlib.contextmanager
def fake_anthropic_server(responder: Callable[[dict], "str | FakeReply"],
                          batch_polls_until_end: int = 1, valid_key: str | None = None) -> Iterator[ServerURL]:
    """Run the fake API on an ephemeral port; yields its base URL (with `.calls`, ...)."""
    state = FakeAnthropic(responder, batch_polls_until_end, valid_key)
    server = _Server(("127.0.0.1", 0), _make_handler(state))
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
