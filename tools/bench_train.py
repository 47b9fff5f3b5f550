"""Training benchmark: tokens/s and MFU of the jitted train step for a model and mesh.

  python tools/bench_train.py --model tiny-llama --batch 8 --seq 256 \
      --set hidden_size=256 --set intermediate_size=688 --set num_layers=6 --set num_heads=8 --set num_kv_heads=4
  python tools/bench_train.py --model qwen3-0.6b --mesh fsdp=-1 --batch 16 --seq 2048 --dtype bfloat16  # on a GPU/TPU

MFU = (6 * matmul params + 6 * layers * heads * head_dim * seq) * tokens/s / (devices * peak);
see msm_jax/train/flops.py for the derivation (MaxText's count, causal attention halved).
On CPU there is no meaningful peak, so MFU is only printed with --peak-tflops; instead the
same model config and batch are trained in transformers + torch in the same invocation
(the baseline) and the ratio of tokens/s is printed. `--compile-layers 4,32` shows that
compile time does not grow with depth (scan over layers; the lowering uses abstract
shapes, so no memory is needed for the deep model).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama", help="preset under configs/models or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="model config override")
    p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="param and compute dtype")
    p.add_argument("--remat", default="none")
    p.add_argument("--lora-rank", type=int, default=0, help=">0: LoRA on all seven projections")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: by device kind)")
    p.add_argument("--baseline", choices=["auto", "torch", "none"], default="auto",
                   help="transformers+torch baseline on the same model and batch (auto: on CPU)")
    p.add_argument("--compile-layers", default="4,32", help="layer counts for the compile-time comparison ('' skips)")
    return p.parse_args()


def model_config(args):
    from msm_jax.config import CONFIGS_DIR, load_config
    from msm_jax.models.config import ModelConfig

    path = args.model if args.model.endswith((".yaml", ".yml")) else CONFIGS_DIR / "models" / f"{args.model}.yaml"
    overrides = list(args.set) + [f"param_dtype={args.dtype}", f"compute_dtype={args.dtype}",
                                  f"remat_policy={args.remat}"]
    return load_config(ModelConfig, path, overrides)


def build(cfg, args):
    from msm_jax.models.lora import LoRAConfig
    from msm_jax.sharding import MeshConfig, make_mesh
    from msm_jax.train.config import OptimizerConfig, ScheduleConfig, TrainConfig
    from msm_jax.train.optimizer import decay_mask, learning_rate, make_optimizer
    from msm_jax.train.state import TrainSpec
    from msm_jax.train.step import make_train_step

    mesh_cfg = MeshConfig(**{k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))})
    mesh = make_mesh(mesh_cfg)
    lora = LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank) if args.lora_rank else None
    spec = TrainSpec.create(cfg, lora, mesh, mesh_cfg.resolved_rules())
    schedule = learning_rate(OptimizerConfig(), ScheduleConfig(warmup_steps=1), 1000)
    tx = make_optimizer(OptimizerConfig(), schedule, decay_mask(spec.abstract_trainable))
    train_cfg = TrainConfig(global_batch=args.batch, seq_len=args.seq, grad_accum=args.grad_accum)
    return spec, tx, make_train_step(spec, train_cfg, tx, schedule)


def packed_batch(cfg, batch, seq, seed=0):
    """Rows of two documents each (exercises segment masking), loss on every target."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, cfg.vocab_size, (batch, seq)).astype(np.int32)
    seg = np.where(np.arange(seq) < seq // 2, 1, 2).astype(np.int32)[None].repeat(batch, 0)
    pos = np.where(seg == 1, np.arange(seq), np.arange(seq) - seq // 2).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": (pos > 0).astype(np.int32)}


def jax_stepper(cfg, args):
    """(first step seconds, a function running one more step and returning its seconds)."""
    import jax

    from msm_jax.train.state import init_state, random_params

    spec, tx, step = build(cfg, args)
    holder = {"state": init_state(spec, tx, *random_params(spec, 0))}
    batch = {k: jax.device_put(v, spec.batch_sharding()) for k, v in packed_batch(cfg, args.batch, args.seq).items()}

    def one() -> float:
        t0 = time.perf_counter()
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - t0

    return one(), one


def torch_stepper(cfg, args):
    """The same architecture and batch in transformers + torch (fp32 AdamW, eager; with
    --lora-rank, PEFT LoRA on the same seven projections)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from msm_jax.hf.hf_config import hf_config_from_model

    hf = hf_config_from_model(cfg, "float32")
    config = AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "architectures"})
    model = AutoModelForCausalLM.from_config(config).train()
    if args.lora_rank:  # the same adapters through PEFT, so both sides train the same weights
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    data = packed_batch(cfg, args.batch, args.seq)
    ids = torch.tensor(data["tokens"], dtype=torch.long)
    pos = torch.tensor(data["positions"], dtype=torch.long)

    def one() -> float:
        t0 = time.perf_counter()
        # Packed rows as transformers sees them: position ids restart per document and
        # flash-style varlen is unavailable on CPU, so attention is plain causal.
        out = model(input_ids=ids, position_ids=pos, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    one()
    return one


def compile_seconds(cfg, args, layers: int) -> float:
    """Lower + compile the train step for a `layers`-deep model from abstract shapes."""
    import jax

    deep = dataclasses.replace(cfg, num_layers=layers)
    spec, tx, step = build(deep, args)
    state = spec.abstract_state(tx)
    batch = {k: jax.ShapeDtypeStruct((args.batch, args.seq), np.int32, sharding=spec.batch_sharding())
             for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    from msm_jax.sharding import use_rules

    t0 = time.perf_counter()
    with jax.set_mesh(spec.mesh), use_rules(spec.rules):
        step.jitted.lower(state, batch).compile()
    return time.perf_counter() - t0


def main() -> None:
    import jax

    from msm_jax.train.flops import device_peak_tflops, flops_per_token, mfu

    args = parse_args()
    cfg = model_config(args)
    device = jax.devices()[0]
    peak = args.peak_tflops or device_peak_tflops(device.device_kind)
    print(f"model {args.model}: {cfg.num_params() / 1e6:.2f}M params, {cfg.num_layers} layers, d={cfg.hidden_size}; "
          f"batch {args.batch} x {args.seq}; {jax.device_count()} x {device.device_kind}; mesh {args.mesh}; "
          f"dtype {args.dtype}; lora rank {args.lora_rank or '-'}")
    first, jax_step = jax_stepper(cfg, args)
    use_torch = args.baseline == "torch" or (args.baseline == "auto" and jax.default_backend() == "cpu")
    torch_step = torch_stepper(cfg, args) if use_torch else None
    # Interleaved rounds, so both sides see the same background load on a shared machine.
    jax_times, torch_times = [], []
    for _ in range(args.steps):
        jax_times.append(jax_step())
        if torch_step is not None:
            torch_times.append(torch_step())
    tokens = args.batch * args.seq
    ours = {"first_step_s": first, "step_s": statistics.median(jax_times)}
    ours["tokens_per_s"] = tokens / ours["step_s"]
    ours["mfu"] = mfu(cfg, args.seq, ours["tokens_per_s"], jax.device_count(), peak)
    ours["flops_per_token"] = flops_per_token(cfg, args.seq)
    shown_mfu = "n/a (no device peak; pass --peak-tflops)" if ours["mfu"] is None else f"{100 * ours['mfu']:.1f}%"
    print(f"msm-jax: first step (compile) {ours['first_step_s']:.2f} s, step {ours['step_s'] * 1e3:.1f} ms, "
          f"{ours['tokens_per_s']:.0f} tokens/s, MFU {shown_mfu}")
    result = {"model": args.model, "config": dataclasses.asdict(cfg), "device": device.device_kind,
              "devices": jax.device_count(), "batch": args.batch, "seq": args.seq, "msm_jax": ours}
    if torch_step is not None:
        import torch
        base = {"step_s": statistics.median(torch_times), "threads": torch.get_num_threads()}
        base["tokens_per_s"] = tokens / base["step_s"]
        result["torch"] = base
        print(f"transformers+torch: step {base['step_s'] * 1e3:.1f} ms, {base['tokens_per_s']:.0f} tokens/s "
              f"({base['threads']} threads); ratio msm-jax / torch = {ours['tokens_per_s'] / base['tokens_per_s']:.2f}")
    if args.compile_layers:
        layers = [int(x) for x in args.compile_layers.split(",")]
        times = {n: compile_seconds(cfg, args, n) for n in layers}
        result["compile_s_by_layers"] = times
        print("compile time (scan over layers): " + ", ".join(f"{n} layers {t:.2f} s" for n, t in times.items()))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
