"""The HTTP front: standard-library threads, one per connection, all feeding one Engine.

A bad request gets a 4xx in OpenAI's error shape and touches nothing else; a failure
inside decoding fails only the requests of that batch (500, or an error event in a stream
already under way), so the server keeps serving. Streams send text as it is decoded, one
event per choice per decoded chunk of tokens.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from msm_jax.serve import protocol
from msm_jax.serve.engine import Engine
from msm_jax.serve.protocol import ApiError, Choice, Limits

MAX_BODY = 64 * 2**20


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, limits: Limits):
        self.engine, self.limits, self.created = engine, limits, int(time.time())
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request on stderr, no bodies (prompts may be private)
        sys.stderr.write(f"msm serve: {self.address_string()} {fmt % args}\n")

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            return self._json(200, protocol.models(self.server.limits.model_name, self.server.created))
        if self.path.rstrip("/") == "/health":
            return self._json(200, {"status": "ok"})
        self._error(ApiError(404, f"no route GET {self.path}", code="not_found"))

    def do_POST(self):
        routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completion}
        route = routes.get(self.path.rstrip("/"))
        try:
            body = self._body()
            if route is None:
                raise ApiError(404, f"no route POST {self.path}", code="not_found")
            route(body)
        except ApiError as e:
            self._error(e)
        except Exception as e:  # noqa: BLE001 - any failure is this request's, not the server's
            self._error(ApiError(500, f"{type(e).__name__}: {e}", kind="server_error"))

    # -- endpoints ------------------------------------------------------------------------

    def _chat(self, body):
        codec = self.server.engine.codec
        req = protocol.parse_chat(body, self.server.limits, lambda chat: codec.encode(codec.render(chat)))
        self._answer(req)

    def _completion(self, body):
        req = protocol.parse_completion(body, self.server.limits, self.server.engine.codec.encode)
        self._answer(req)

    def _answer(self, req: protocol.Request):
        if req.stream:
            return self._stream(req)
        engine = self.server.engine
        futures = [engine.submit(job) for job in req.jobs]
        choices = []
        for job, fut in zip(req.jobs, futures):
            for gen in fut.result():
                text, reason, ntok = protocol.finish(gen, job.params, engine.codec.decode)
                choices.append(Choice(len(choices), text, reason, ntok))
        self._json(200, protocol.response(req, self.server.limits.model_name, choices))

    def _stream(self, req: protocol.Request):
        """Server-sent events while the jobs decode: the batcher thread reports each row's
        tokens after every chunk (and each job's end) into a queue this thread drains."""
        engine = self.server.engine
        decode, eos = engine.codec.decode, set(engine.codec.eos_ids)
        events: queue.Queue = queue.Queue()  # (job i, choice k, tokens) or (job i, None, future)
        first = [sum(j.n for j in req.jobs[:i]) for i in range(len(req.jobs))]  # choice index of row 0
        for i, job in enumerate(req.jobs):
            fut = engine.submit(job, progress=lambda k, tokens, i=i: events.put((i, k, tokens)))
            fut.add_done_callback(lambda f, i=i: events.put((i, None, f)))
        chunks = protocol.StreamChunks(req, self.server.limits.model_name)
        sent = [""] * sum(j.n for j in req.jobs)
        choices = []
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if req.kind == "chat":
                for c in range(len(sent)):
                    self._event(chunks.role(c))
            left = len(req.jobs)
            while left:
                i, k, payload = events.get()
                job = req.jobs[i]
                if k is not None:  # progress of choice k of job i
                    self._send_new(chunks, sent, first[i] + k, protocol.partial_text(payload, job.params, eos, decode))
                    continue
                left -= 1
                try:
                    gens = payload.result()
                except Exception as e:  # noqa: BLE001 - the stream is under way: say it in the stream
                    self._event(ApiError(500, f"{type(e).__name__}: {e}", kind="server_error").body())
                    return
                for k, gen in enumerate(gens):
                    text, reason, ntok = protocol.finish(gen, job.params, decode)
                    self._send_new(chunks, sent, first[i] + k, text)
                    self._event(chunks.finish(first[i] + k, reason))
                    choices.append(Choice(first[i] + k, text, reason, ntok))
            if req.include_usage:
                self._event(chunks.usage(sorted(choices, key=lambda c: c.index)))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client left; its rows finish decoding unread
            return

    def _send_new(self, chunks: protocol.StreamChunks, sent: list[str], c: int, text: str) -> None:
        """Send what `text` adds to what choice c has been sent (it always extends it)."""
        if len(text) > len(sent[c]) and text.startswith(sent[c]):
            self._event(chunks.delta(c, text[len(sent[c]):]))
            sent[c] = text

    def _event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    # -- plumbing -------------------------------------------------------------------------

    def _body(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise ApiError(400, "bad Content-Length header") from None
        if length > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})") from None

    def _json(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: ApiError):
        self._json(e.status, e.body())


def make_server(engine: Engine, limits: Limits, host: str = "127.0.0.1", port: int = 8000) -> Server:
    return Server((host, port), engine, limits)
