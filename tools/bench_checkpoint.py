"""Checkpoint benchmark: what array checksums cost, and how large a LoRA checkpoint is.

  python tools/bench_checkpoint.py --set hidden_size=1024 --set intermediate_size=2816 \
      --set num_heads=16 --set num_kv_heads=8 --set vocab_size=2048 --lora-rank 64

1. Checksums: a full-fine-tuning checkpoint (params + AdamW state) is saved and restored
   through Orbax; the checksum pass (computing them on save, verifying them on restore) is
   timed separately and printed as a ratio of the Orbax save/restore time measured in the
   same run (the baseline).
2. LoRA: one training step folder of a LoRA run (adapter + its AdamW state + records) next
   to its frozen base saved once, in bytes on disk, and the ratio adapter step / base; also
   what a step held before (base + adapter + state) for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `fn` (each call returns host values or restored, ready arrays)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--lora-rank", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import jax
    import optax
    import orbax.checkpoint as ocp
    from flax import nnx

    from msm_jax import checkpoint, checksums
    from msm_jax.config import load_config
    from msm_jax.models.config import ModelConfig
    from msm_jax.models.decoder import Decoder
    from msm_jax.models.lora import LoRAConfig, LoRAParam, apply_lora

    cfg = load_config(ModelConfig, f"configs/models/{args.model}.yaml", args.set)
    lora_cfg = LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
    model = apply_lora(Decoder(cfg, nnx.Rngs(0)), lora_cfg)
    base = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adapters = nnx.to_pure_dict(nnx.state(model, LoRAParam))
    # Trained values, not zeros: Orbax compresses, and fresh adapters (B = 0) or moments
    # (all 0) would look far smaller on disk than trained ones.
    keys = iter(jax.random.split(jax.random.key(1), 4096))
    trained = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: x if x.ndim == 0 else 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), tree)
    adapters = trained(adapters)
    full_opt, lora_opt = trained(optax.adamw(1e-4).init(base)), trained(optax.adamw(1e-4).init(adapters))
    n_base = sum(x.size for x in jax.tree.leaves(base))
    n_lora = sum(x.size for x in jax.tree.leaves(adapters))
    report = {"model": {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_layers", "vocab_size",
                                                        "param_dtype")},
              "base_params": n_base, "lora_rank": args.lora_rank, "lora_params": n_lora}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. checksum cost, full fine-tuning state
        items = {"params": base, "opt_state": full_opt}
        checksum_s, _ = timed(lambda: checkpoint.array_records(items), args.repeat)
        saves = []
        for i in range(args.repeat):
            d = tmp / f"full{i}"
            t0 = time.perf_counter()
            with checkpoint.manager(d, item_names=("params", "opt_state")) as mngr:
                mngr.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(base),
                                                     opt_state=ocp.args.StandardSave(full_opt)))
                mngr.wait_until_finished()
            saves.append(time.perf_counter() - t0)
        save_s = statistics.median(saves)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), items)

        def restore():
            with checkpoint.manager(tmp / "full0", item_names=("params", "opt_state")) as mngr:
                return dict(mngr.restore(1, args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(target["params"]),
                    opt_state=ocp.args.StandardRestore(target["opt_state"]))))
        restore_s, restored = timed(restore, args.repeat)
        verify_s, _ = timed(lambda: checksums.tree_checksums(restored), args.repeat)
        report["checksums"] = {"state_bytes": du(tmp / "full0" / "1"), "orbax_save_s": round(save_s, 4),
                               "checksum_s": round(checksum_s, 4), "save_overhead": round(checksum_s / save_s, 4),
                               "orbax_restore_s": round(restore_s, 4), "verify_s": round(verify_s, 4),
                               "restore_overhead": round(verify_s / restore_s, 4)}

        # 2. LoRA step vs its base
        checkpoint.save_params(tmp / "base", base, checkpoint.make_meta(cfg))
        meta = checkpoint.make_meta(cfg, base=checkpoint.base_reference(tmp / "base", 0, holder=tmp / "lora"))
        with checkpoint.train_manager(tmp / "lora", keep_last=None, keep_every=None, async_save=False) as mngr:
            checkpoint.save_train_step(mngr, 1, params=None, lora=adapters, opt_state=lora_opt, meta=meta,
                                       train_info={"step": 1})
            mngr.wait_until_finished()
        base_bytes, step_bytes = du(tmp / "base" / "0"), du(tmp / "lora" / "1")
        report["lora"] = {"base_bytes": base_bytes, "lora_step_bytes": step_bytes,
                          "lora_step_over_base": round(step_bytes / base_bytes, 4),
                          "before_step_bytes": base_bytes + step_bytes,
                          "step_now_over_before": round(step_bytes / (base_bytes + step_bytes), 4)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
