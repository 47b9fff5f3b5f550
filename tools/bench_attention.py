"""The attention core alone, forward + backward: msm-jax's XLA path against torch's CPU kernels.

  python tools/bench_attention.py [--batch 8 --seq 256 --heads 8 --kv-heads 2 --head-dim 32] [--rounds 15]

One layer's attention on packed rows of two documents each (the shapes of the 5.28M
reference config of tools/bench_train.py): gradients of q, k and v of sum(out * g).
msm-jax: `xla_attention` (causal query blocks, custom-VJP backward, segment mask), jitted
once. torch (2 threads): `scaled_dot_product_attention` with its flash kernel and with the
unfused math kernel, each causal and with the same segment mask, k/v repeated over the
query groups as transformers does. Steps interleaved round by round, each timed call after
an untimed one of the same variant; the median per variant. This separates the attention
kernel from the rest of the train step (`tools/profile_train.py --ablate-attention` measures
it inside the step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=15, help="timed calls per variant")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_train import interleaved_times
    from msm_jax.models.attention import xla_attention

    b, t, h, kv, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(0)
    q, g = (rng.standard_normal((b, t, h, d)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((b, t, kv, d)).astype(np.float32) for _ in range(2))
    seg = np.where(np.arange(t) < t // 2, 1, 2).astype(np.int32)[None].repeat(b, 0)

    grads = jax.jit(jax.grad(lambda q, k, v: (xla_attention(q, k, v, seg, seg) * g).sum(), argnums=(0, 1, 2)))
    jq, jk, jv = map(jnp.asarray, (q, k, v))

    def ours() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(grads(jq, jk, jv))
        return time.perf_counter() - t0

    torch.set_num_threads(2)
    tq = torch.tensor(q).transpose(1, 2).contiguous().requires_grad_()
    tk, tv = (torch.tensor(x).transpose(1, 2).repeat_interleave(h // kv, 1).contiguous().requires_grad_()
              for x in (k, v))
    tg = torch.tensor(g).transpose(1, 2).contiguous()
    segs = torch.tensor(seg)
    mask = ((segs[:, :, None] == segs[:, None, :]) & torch.ones(t, t, dtype=torch.bool).tril())[:, None]

    def torch_variant(backend, masked: bool):
        def run() -> float:
            t0 = time.perf_counter()
            with sdpa_kernel(backend):
                out = torch.nn.functional.scaled_dot_product_attention(
                    tq, tk, tv, attn_mask=mask if masked else None, is_causal=not masked)
            (out * tg).sum().backward()
            tq.grad = tk.grad = tv.grad = None
            return time.perf_counter() - t0
        return run

    variants = {
        "msm-jax xla_attention (segment mask)": ours,
        "torch SDPA flash, causal": torch_variant(SDPBackend.FLASH_ATTENTION, False),
        "torch SDPA flash, segment mask": torch_variant(SDPBackend.FLASH_ATTENTION, True),
        "torch SDPA math, causal": torch_variant(SDPBackend.MATH, False),
        "torch SDPA math, segment mask": torch_variant(SDPBackend.MATH, True),
    }
    for run in variants.values():  # compile, warm
        run()
    times = dict(zip(variants, interleaved_times(list(variants.values()), args.rounds)))
    base = statistics.median(times["torch SDPA flash, causal"])
    print(f"attention fwd+bwd, batch {b} x {t}, {h}/{kv} heads, head_dim {d}, fp32, median of {args.rounds} "
          f"interleaved calls, torch {torch.get_num_threads()} threads")
    print("| variant | ms per layer | vs torch flash causal |\n|---|---|---|")
    for name, ts in times.items():
        ms = 1e3 * statistics.median(ts)
        print(f"| {name} | {ms:.2f} | {base * 1e3 / ms:.2f}x |")


if __name__ == "__main__":
    main()
