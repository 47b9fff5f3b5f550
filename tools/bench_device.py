"""One-shot accelerator check (one GPU, under 8 minutes): four measurements, one table.

    tools/bench_device.sh [--out DIR] [--json FILE] [--only attention,mfu,sampler,vllm]
    python tools/bench_device.py --dry-run      # CPU: tiny shapes, checks the plumbing

1. attention: cuDNN fused attention vs the XLA reference on packed rows (several documents
   per row, padded tail), bfloat16: max difference of outputs and of q/k/v gradients on the
   real tokens, and the time of a jitted forward+backward for each.
2. mfu: the jitted train step (AdamW) of a ~1.2B Llama (Llama-3.2-1B shapes) in bfloat16,
   tokens/s and MFU against the device's dense bf16 peak (msm_jax/train/flops.py).
3. sampler: `msm_jax.sampling.Sampler` greedy tokens/s on that model, batch 8.
4. vllm: a small random Llama with LoRA adapters is exported (HF folder + PEFT adapter);
   vLLM loads both and its greedy tokens are compared with the JAX sampler's (base model
   and base + adapter). Skipped with a note when vllm is not installed.

Every part runs even when an earlier one fails; failures become a row, not a crash.
`--dry-run` replaces every shape by a tiny one and runs on whatever backend JAX has
(attention compares XLA with itself when cuDNN is unavailable), so the script is tested on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from msm_jax.models.config import RematPolicy  # noqa: E402

PARTS = ("attention", "mfu", "sampler", "vllm")

# Llama-3.2-1B shapes (1.24B parameters with its 128k vocabulary).
LLAMA_1B = ["hidden_size=2048", "intermediate_size=8192", "num_layers=16", "num_heads=32", "num_kv_heads=8",
            "vocab_size=128256", "tie_embeddings=true", "rope_theta=500000.0"]
TINY = ["hidden_size=64", "intermediate_size=128", "num_layers=2", "num_heads=4", "num_kv_heads=2",
        "vocab_size=512"]
# vLLM's kernels want head_dim 64+; small enough to export in a second.
VLLM_MODEL = ["hidden_size=256", "intermediate_size=512", "num_layers=2", "num_heads=4", "num_kv_heads=2",
              "vocab_size=2048", "tie_embeddings=false"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, from {', '.join(PARTS)}")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on any backend (the CPU test)")
    p.add_argument("--out", default=None, help="working folder for the exported model (default: a temp folder)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--batch", type=int, default=None, help="train batch (default 8; dry run 2)")
    p.add_argument("--seq", type=int, default=None, help="train sequence length (default 2048; dry run 64)")
    p.add_argument("--remat", default="none", choices=typing.get_args(RematPolicy))
    p.add_argument("--steps", type=int, default=None, help="timed train steps (default 10; dry run 2)")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    args.parts = parts
    args.batch = args.batch or (2 if args.dry_run else 8)
    args.seq = args.seq or (64 if args.dry_run else 2048)
    args.steps = args.steps or (2 if args.dry_run else 10)
    for name in ("batch", "seq", "steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    return args


def model_config(overrides, dtype):
    from msm_jax.config import CONFIGS_DIR, load_config
    from msm_jax.models.config import ModelConfig

    return load_config(ModelConfig, CONFIGS_DIR / "models" / "tiny-llama.yaml",
                       list(overrides) + [f"param_dtype={dtype}", f"compute_dtype={dtype}", "rope_scaling=null"])


def dtype_for(args) -> str:
    return "float32" if args.dry_run else "bfloat16"  # bf16 is emulated (slow) on CPU


def size(cfg) -> str:
    n = cfg.num_params()
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def timed(fn, *a, repeats=10):
    import jax
    jax.block_until_ready(fn(*a))
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*a)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats


def packed_segments(batch, length, rng):
    """Rows of three documents of random lengths and a padded tail (segment 0)."""
    import numpy as np
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length - length // 8), 2, replace=False))
        ends = list(cuts) + [length - length // 8]
        start = 0
        for i, end in enumerate(ends):
            seg[b, start:end] = i + 1
            start = end
    return seg


def part_attention(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from msm_jax.models.attention import attention

    b, t, h, kv, d = (2, 64, 4, 2, 16) if args.dry_run else (4, 2048, 16, 8, 128)
    rng = np.random.default_rng(0)
    dtype = jnp.float32 if args.dry_run else jnp.bfloat16  # bf16 is emulated (slow) on CPU
    q, k, v, ct = (jnp.asarray(rng.standard_normal(s), dtype)
                   for s in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d), (b, t, h, d)))
    seg = jnp.asarray(packed_segments(b, t, rng))
    real = np.asarray(seg) != 0
    ct = ct * (seg != 0)[:, :, None, None].astype(ct.dtype)  # padding rows carry no gradient
    other = "cudnn" if jax.default_backend() == "gpu" else "xla"

    def loss_and_grads(impl):
        def loss(q, k, v):
            out = attention(q, k, v, seg, seg, impl=impl)
            return jnp.sum(out.astype(jnp.float32) * ct.astype(jnp.float32)), out
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    ref_fn, fast_fn = loss_and_grads("xla"), loss_and_grads(other)
    (_, ref_out), ref_g = ref_fn(q, k, v)
    (_, out), g = fast_fn(q, k, v)
    diff = lambda a, b_, m: float(jnp.max(jnp.abs(a.astype(jnp.float32) - b_.astype(jnp.float32))[m]))
    out_diff = diff(out, ref_out, real)
    grad_diff = max(diff(g[0], ref_g[0], real), diff(g[1], ref_g[1], real), diff(g[2], ref_g[2], real))
    t_ref, t_fast = timed(ref_fn, q, k, v), timed(fast_fn, q, k, v)
    ok = out_diff < 2e-2 and grad_diff < 5e-2
    note = "" if other == "cudnn" else "no GPU: XLA compared with itself"
    return {"status": "ok" if ok else "MISMATCH", "shape": f"B{b} T{t} H{h}/{kv} D{d} {jnp.dtype(dtype).name}, 3 docs/row + pad",
            "impl": other, "max_abs_diff_out": out_diff, "max_abs_diff_grad": grad_diff,
            "fwd_bwd_ms_xla": 1e3 * t_ref, f"fwd_bwd_ms_{other}": 1e3 * t_fast, "note": note}


def build_train(cfg, args):
    from msm_jax.sharding import MeshConfig, make_mesh
    from msm_jax.train.config import OptimizerConfig, ScheduleConfig, TrainConfig
    from msm_jax.train.optimizer import decay_mask, learning_rate, make_optimizer
    from msm_jax.train.state import TrainSpec
    from msm_jax.train.step import make_train_step

    mesh_cfg = MeshConfig(data=1, fsdp=-1, tensor=1)
    spec = TrainSpec.create(cfg, None, make_mesh(mesh_cfg), mesh_cfg.resolved_rules())
    schedule = learning_rate(OptimizerConfig(), ScheduleConfig(warmup_steps=1), 1000)
    tx = make_optimizer(OptimizerConfig(), schedule, decay_mask(spec.abstract_trainable))
    return spec, tx, make_train_step(spec, TrainConfig(global_batch=args.batch, seq_len=args.seq), tx, schedule)


def part_mfu(args):
    import jax
    import numpy as np

    from msm_jax.train.flops import device_peak_tflops, mfu
    from msm_jax.train.state import init_state, random_params

    cfg = model_config((TINY if args.dry_run else LLAMA_1B) + [f"remat_policy={args.remat}"], dtype_for(args))
    spec, tx, step = build_train(cfg, args)
    state = init_state(spec, tx, *random_params(spec, 0))
    rng = np.random.default_rng(0)
    seg = packed_segments(args.batch, args.seq, rng)
    pos = np.zeros_like(seg)
    for b in range(args.batch):
        for s in np.unique(seg[b]):
            idx = np.flatnonzero(seg[b] == s)
            pos[b, idx] = np.arange(len(idx))
    batch = {"tokens": rng.integers(1, cfg.vocab_size, seg.shape).astype(np.int32), "segment_ids": seg,
             "positions": pos, "loss_mask": (seg != 0).astype(np.int32)}
    batch = {k: jax.device_put(v, spec.batch_sharding()) for k, v in batch.items()}
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.steps
    tps = args.batch * args.seq / step_s
    device = jax.devices()[0]
    value = mfu(cfg, args.seq, tps, jax.device_count(), device_peak_tflops(device.device_kind))
    return {"status": "ok" if np.isfinite(float(metrics["loss"])) else "NON-FINITE LOSS",
            "model": f"{size(cfg)} Llama {dtype_for(args)}, batch {args.batch}x{args.seq}, remat {args.remat}",
            "first_step_s": first, "step_ms": 1e3 * step_s, "tokens_per_s": tps,
            "mfu": value, "note": "" if value is not None else f"no peak known for {device.device_kind!r}"}


def part_sampler(args):
    import jax
    import numpy as np
    from flax import nnx

    from msm_jax.models.decoder import Decoder
    from msm_jax.sampling import Sampler, SamplingParams

    cfg = model_config(TINY if args.dry_run else LLAMA_1B, dtype_for(args))
    model = Decoder(cfg, nnx.Rngs(0))
    batch, plen, new = (2, 16, 8) if args.dry_run else (8, 512, 256)
    prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, plen)).tolist()
    sampler = Sampler(model, chunk_size=min(64, new))
    params = SamplingParams(max_tokens=new, temperature=0)
    sampler.generate(prompts, params, batch_size=batch)  # compile
    t0 = time.perf_counter()
    sampler.generate(prompts, params, batch_size=batch)
    seconds = time.perf_counter() - t0
    del model, sampler
    jax.clear_caches()
    return {"status": "ok", "model": f"{size(cfg)} Llama {dtype_for(args)}",
            "shape": f"batch {batch}, prompt {plen}, {new} new tokens (greedy, prefill included)",
            "tokens_per_s": batch * new / seconds, "note": ""}


def export_small_lora(out: Path):
    """A small random Llama with non-zero LoRA adapters, saved and exported (base + PEFT)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from msm_jax import checkpoint
    from msm_jax.config import to_dict
    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.hf.peft import export_peft_adapter
    from msm_jax.models.decoder import Decoder
    from msm_jax.models.lora import LoRAConfig, LoRAParam, apply_lora, lora_adapters

    cfg = model_config(VLLM_MODEL, "float32")
    lora_cfg = LoRAConfig(rank=8, alpha=16.0)
    model = apply_lora(Decoder(cfg, nnx.Rngs(0)), lora_cfg, seed=0)
    for i, (_, lora) in enumerate(lora_adapters(model)):
        lora.b[...] = 0.05 * jax.random.normal(jax.random.key(100 + i), lora.b[...].shape)
    base = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adapters = nnx.to_pure_dict(nnx.state(model, LoRAParam))
    meta = checkpoint.make_meta(cfg, lora=to_dict(lora_cfg))
    with checkpoint.manager(out / "ckpt", item_names=checkpoint.TRAIN_ITEMS) as mngr:
        mngr.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(base), lora=ocp.args.StandardSave(adapters),
                                             meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()
    base_dir = orbax_to_hf(out / "ckpt", out / "base", merge_lora=False)
    adapter_dir = export_peft_adapter(out / "ckpt", out / "adapter", base_model=str(base_dir))
    return cfg, model, base_dir, adapter_dir


def part_vllm(args, out: Path):
    try:
        import vllm
    except ImportError:
        return {"status": "skipped", "note": "vllm is not installed (pip install vllm on a GPU machine)"}
    import numpy as np
    from flax import nnx

    from msm_jax.sampling import Sampler, SamplingParams

    from msm_jax.models.decoder import Decoder

    cfg, lora_model, base_dir, adapter_dir = export_small_lora(out)
    base_model = Decoder(cfg, nnx.Rngs(0))  # apply_lora leaves the base weights of this seed unchanged
    prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (8, 24)).tolist()
    new = 32
    params = SamplingParams(max_tokens=new, temperature=0)
    ours_base = [g.tokens for g in Sampler(base_model).generate(prompts, params, batch_size=8)]
    ours_lora = [g.tokens for g in Sampler(lora_model).generate(prompts, params, batch_size=8)]
    from vllm.lora.request import LoRARequest

    llm = vllm.LLM(model=str(base_dir), dtype="float32", skip_tokenizer_init=True, enable_lora=True, max_lora_rank=8,
                   gpu_memory_utilization=0.3, enforce_eager=True)
    sp = vllm.SamplingParams(temperature=0, max_tokens=new, min_tokens=new, ignore_eos=True, detokenize=False)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    theirs_base = [list(o.outputs[0].token_ids) for o in llm.generate(inputs, sp)]
    theirs_lora = [list(o.outputs[0].token_ids) for o in llm.generate(inputs, sp, lora_request=LoRARequest(
        "msm", 1, str(adapter_dir)))]
    agree = lambda a, b: float(np.mean(np.asarray(a) == np.asarray(b)))
    equal = ours_base == theirs_base and ours_lora == theirs_lora
    return {"status": "ok" if equal else "DIFFERENT", "vllm": vllm.__version__,
            "base_token_agreement": agree(ours_base, theirs_base),
            "lora_token_agreement": agree(ours_lora, theirs_lora),
            "note": f"{cfg.num_params() / 1e6:.1f}M Llama fp32 + rank-8 PEFT adapter, 8 prompts x {new} greedy tokens"}


def summary_line(name, row):
    keys = [k for k in row if k not in ("status", "note")]
    shown = []
    for k in keys:
        v = row[k]
        shown.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"| {name} | {row['status']} | {'; '.join(shown)} | {row.get('note', '')} |"


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    device = jax.devices()[0]
    results = {"device": f"{jax.device_count()} x {device.device_kind} ({jax.default_backend()})",
               "jax": jax.__version__, "dry_run": args.dry_run, "parts": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for part in args.parts:
            t0 = time.perf_counter()
            try:
                row = {"attention": part_attention, "mfu": part_mfu, "sampler": part_sampler}[part](args) \
                    if part != "vllm" else part_vllm(args, out)
            except Exception as exc:  # one failing part must not hide the others
                traceback.print_exc()
                row = {"status": "FAILED", "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                       if str(exc) else type(exc).__name__}
            row["seconds"] = time.perf_counter() - t0
            results["parts"][part] = row
            print(f"[bench_device] {part}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
    results["total_s"] = time.perf_counter() - start
    print(f"\nbench_device on {results['device']}, jax {results['jax']}{' (dry run)' if args.dry_run else ''}, "
          f"{results['total_s']:.0f} s")
    print("| part | status | measured | note |")
    print("|---|---|---|---|")
    for name, row in results["parts"].items():
        print(summary_line(name, row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    failed = [n for n, r in results["parts"].items() if r["status"] not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
