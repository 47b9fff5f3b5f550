"""KV-cache generation next to full recomputation, in the same run.

    python tools/bench_sampling.py [--model tiny-llama] [--batch 8] [--prompt-len 128] [--new-tokens 64]

Baseline: greedy decoding that reruns the whole (fixed-length, jitted) forward for every
new token, the cost of sampling without a cache. Measured: `msm_jax.sampling.Sampler`
(prefill once, then jitted decode chunks over the KV cache). Both are timed after a
warm-up call, so compile time is excluded; the tokens must agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msm_jax.config import load_config  # noqa: E402
from msm_jax.models.config import ModelConfig  # noqa: E402
from msm_jax.models.decoder import Decoder  # noqa: E402
from msm_jax.sampling import Sampler, SamplingParams  # noqa: E402


def recompute_greedy(model: Decoder, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy decoding by full forwards over a fixed [B, P + N] buffer (one compile)."""
    graphdef, state = nnx.split(model)
    batch, plen = prompts.shape
    total = plen + new_tokens

    @jax.jit
    def step(state, tokens, length):
        segs = (jnp.arange(total)[None] < length).astype(jnp.int32).repeat(batch, 0)
        logits = nnx.merge(graphdef, state)(tokens, None, segs)
        nxt = jnp.argmax(logits[:, length - 1], axis=-1).astype(jnp.int32)
        return tokens.at[:, length].set(nxt)

    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :plen].set(prompts)
    for i in range(new_tokens):
        tokens = step(state, tokens, plen + i)
    return np.asarray(tokens[:, plen:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama", help="a preset under configs/models/")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    cfg = load_config(ModelConfig, Path(__file__).resolve().parent.parent / "configs/models" / f"{args.model}.yaml")
    model = Decoder(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, size=(args.batch, args.prompt_len)).astype(np.int32)
    sampler = Sampler(model, chunk_size=32)
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0)

    def cached():
        return np.asarray([g.tokens for g in sampler.generate(prompts.tolist(), params, batch_size=args.batch)])

    timings = {}
    for name, fn in (("recompute", lambda: recompute_greedy(model, prompts, args.new_tokens)), ("kv_cache", cached)):
        fn()  # compile
        start = time.perf_counter()
        out = fn()
        timings[name] = (time.perf_counter() - start, out)
    (t_base, base), (t_kv, kv) = timings["recompute"], timings["kv_cache"]
    new = args.batch * args.new_tokens
    print(f"model={args.model} batch={args.batch} prompt={args.prompt_len} new_tokens={args.new_tokens} "
          f"device={jax.devices()[0].platform}")
    print(f"recompute: {new / t_base:9.1f} tok/s")
    print(f"kv_cache:  {new / t_kv:9.1f} tok/s   speed-up x{t_base / t_kv:.2f}   tokens agree: {np.array_equal(base, kv)}")


if __name__ == "__main__":
    main()
