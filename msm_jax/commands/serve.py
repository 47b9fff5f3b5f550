"""`msm serve PATH`: an OpenAI-compatible server for a checkpoint or a Hugging Face folder."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from msm_jax.config import ConfigError, parse_override

EPILOG = """\
examples:
  msm serve RUN/checkpoints --port 8000
  msm serve ./export/sft --model-name sft --batch-size 16
  curl http://127.0.0.1:8000/v1/models

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models. Point any
OpenAI client at http://HOST:PORT/v1 (any API key); with Inspect:
  MSM_BASE_URL=http://127.0.0.1:8000/v1 MSM_API_KEY=x inspect eval TASK --model openai-api/msm/NAME
On a multi-host slice run the same command on every host: process 0 serves HTTP and
every process decodes each batch.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API",
                       description="Serve an Orbax checkpoint (a run dir) or a Hugging Face folder over "
                                   "OpenAI's chat and completions API; concurrent requests decode as one batch.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="Orbax run/checkpoint dir, or a Hugging Face model folder (config.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    p.add_argument("--model-name", help="the model id clients ask for (default: the folder's name)")
    p.add_argument("--tokenizer", help="tokenizer file or folder (default: the checkpoint's / the folder's own)")
    p.add_argument("--chat-template", help="llama3|llama3.1|qwen2.5|qwen3|plain (default: the model family's)")
    p.add_argument("--enable-thinking", action="store_true", help="qwen3: let the model think before answering")
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=8, help="rows decoded together at most (default 8)")
    p.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long a request waits for others to share its batch (default 10)")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="completion tokens when a request sets none (capped by the context; default 1024)")
    p.add_argument("--mesh", action="append", default=[], metavar="AXIS=SIZE",
                   help="device mesh, e.g. --mesh data=1 --mesh fsdp=-1 --mesh tensor=4 (default fsdp over all)")
    p.set_defaults(func=run)


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop serving cleanly: process 0 finishes the batch in flight and
    tells the other processes to stop. Set explicitly because a server started in the
    background by a shell inherits SIGINT ignored, and SIGTERM (what process managers send)
    would otherwise end process 0 alone, leaving the others waiting for its next batch."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def run(args) -> int:
    from msm_jax import distributed, storage
    from msm_jax.train.config import DistributedConfig
    if args.batch_size < 1 or args.max_tokens < 1 or args.batch_window_ms < 0:
        raise ConfigError("--batch-size and --max-tokens must be positive, --batch-window-ms >= 0")
    distributed.initialize(DistributedConfig())

    from msm_jax.serve import multihost
    from msm_jax.serve.engine import Engine, ServeOptions, load_backend
    from msm_jax.serve.http import make_server
    from msm_jax.serve.protocol import Limits
    mesh = dict(parse_override(m) for m in args.mesh)
    opts = ServeOptions(tokenizer=args.tokenizer, chat_template=args.chat_template,
                        enable_thinking=args.enable_thinking, step=args.step, batch_size=args.batch_size,
                        window_s=args.batch_window_ms / 1000, mesh=mesh)
    path = args.path  # a gs:// Hugging Face folder is read from a local copy, a checkpoint in place (Orbax)
    if storage.is_remote(path) and storage.exists(storage.join(path, "config.json")):
        path = storage.localize(path)
    engine = Engine(load_backend(path, opts), batch_size=opts.batch_size, window_s=opts.window_s)
    if not multihost.is_leader():
        multihost.follow(engine.generate)
        return 0
    name = args.model_name or os.path.basename(os.path.normpath(args.path))
    limits = Limits(model_name=name, max_len=engine.max_len, default_max_tokens=args.max_tokens)
    server = make_server(engine.start(), limits, args.host, args.port)
    _stop_on_signals()
    print(f"msm serve: {name} listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("msm serve: stopping", file=sys.stderr)
    finally:
        server.server_close()
        engine.stop()
    return 0
