"""`msm serve` throughput with concurrent clients next to the offline sampler, in the same run.

    python tools/bench_serve.py [--model tiny-llama] [--clients 8] [--prompt-len 128] [--new-tokens 64] [--rounds 10]

Baseline: `Sampler.generate` on all the clients' prompts at once (batch = clients), the
best the server could do. Measured: the server (engine + HTTP in this process) with
`--clients` threads each POSTing one /v1/completions request (token-id prompt, greedy,
no end-of-sequence token so every row makes exactly --new-tokens), all released together;
tokens/s = completion tokens / wall time from the first send to the last answer. Both are
timed after a warm-up round (compilation excluded), in alternating rounds, and must produce
the same tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.backends import Codec, JaxBackend  # noqa: E402
from msm_jax.config import load_config  # noqa: E402
from msm_jax.models.config import ModelConfig  # noqa: E402
from msm_jax.models.decoder import Decoder  # noqa: E402
from msm_jax.sampling import SamplingParams  # noqa: E402
from msm_jax.serve.engine import Engine  # noqa: E402
from msm_jax.serve.http import make_server  # noqa: E402
from msm_jax.serve.protocol import Limits  # noqa: E402


def ids_codec() -> Codec:
    """Token ids as text ("5 17 3"): no tokenizer needed, and no end-of-sequence token."""
    return Codec(encode=lambda text: [int(t) for t in text.split()], decode=lambda ids: " ".join(map(str, ids)),
                 render=lambda chat: chat[-1]["content"], eos_ids=())


def offline(backend: JaxBackend, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    gens = backend.sampler.generate(prompts, SamplingParams(max_tokens=new_tokens, temperature=0),
                                    batch_size=len(prompts))
    return time.perf_counter() - start, [g.tokens for g in gens]


def served(url: str, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(prompts) + 1)

    def client(i: int) -> None:
        body = json.dumps({"model": "bench", "prompt": prompts[i], "max_tokens": new_tokens, "temperature": 0})
        req = urllib.request.Request(f"{url}/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        barrier.wait()
        with urllib.request.urlopen(req, timeout=600) as resp:
            text = json.loads(resp.read())["choices"][0]["text"]
        results[i] = [int(t) for t in text.split()]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, [results[i] for i in range(len(prompts))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama", help="a preset under configs/models/")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--window-ms", type=float, default=10.0, help="the server's batching window")
    args = parser.parse_args()

    cfg = load_config(ModelConfig, Path(__file__).resolve().parent.parent / "configs/models" / f"{args.model}.yaml")
    backend = JaxBackend(Decoder(cfg, nnx.Rngs(0)), ids_codec(), batch_size=args.clients)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, cfg.vocab_size, size=(args.clients, args.prompt_len)).tolist()
    engine = Engine(backend, batch_size=args.clients, window_s=args.window_ms / 1000).start()
    server = make_server(engine, Limits(model_name="bench", max_len=cfg.max_position_embeddings,
                                       default_max_tokens=args.new_tokens), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, expected = offline(backend, prompts, args.new_tokens)  # warm-up: compiles the shapes both use
        _, got = served(server.url, prompts, args.new_tokens)
        assert got == expected, "the server's tokens differ from the offline sampler's"
        tokens = args.clients * args.new_tokens
        engine.batches.clear()
        off, srv = [], []
        for _ in range(args.rounds):  # alternated, so a busy moment of the machine hits both alike
            off.append(tokens / offline(backend, prompts, args.new_tokens)[0])
            srv.append(tokens / served(server.url, prompts, args.new_tokens)[0])
    finally:
        server.shutdown()
        engine.stop()
    print(f"model {args.model}, {args.clients} clients, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"{args.rounds} rounds (median)")
    print(f"offline sampler: {np.median(off):9.0f} tokens/s")
    print(f"msm serve:       {np.median(srv):9.0f} tokens/s  (rows per sampler call: {list(engine.batches)})")
    ratios = np.asarray(srv) / np.asarray(off)
    print(f"ratio: {np.median(ratios):.2f}x (median of {args.rounds} alternated rounds; "
          f"quartiles {np.quantile(ratios, 0.25):.2f}-{np.quantile(ratios, 0.75):.2f})")


if __name__ == "__main__":
    main()
