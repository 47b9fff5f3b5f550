"""Training benchmark: tokens/s and MFU of the jitted train step for a model and mesh.

  python tools/bench_train.py [--json]     # the two reference configs below, vs transformers+torch
  python tools/bench_train.py --model tiny-llama --set hidden_size=128 --set num_layers=4   # one custom config
  python tools/bench_train.py --model qwen3-0.6b --mesh fsdp=-1 --batch 16 --seq 2048 --dtype bfloat16  # on a GPU/TPU

Without --model/--set it runs both reference configs (fp32 AdamW, batch 8 x 256, packed rows):
5.28M (d=256, 6 layers, 8/2 heads, head_dim 32, MLP 704, vocab 2048) and 8.45M (d=256,
6 layers, 8/4 heads, MLP 688, vocab 8000), each with scan_layers=true (the default) and
false, and prints one markdown table with the ratio to transformers+torch.

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
import os
import statistics
import time

import numpy as np


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset under configs/models or a YAML path (default: the two "
                   "reference configs)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="model config override")
    p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (each after an untimed one)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="param and compute dtype")
    p.add_argument("--remat", default="projections", help="remat policy (the model config's default: projections)")
    p.add_argument("--lora-rank", type=int, default=0, help=">0: LoRA on all seven projections")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: by device kind)")
    p.add_argument("--baseline", choices=["auto", "torch", "none"], default="auto",
                   help="transformers+torch baseline on the same model and batch (auto: on CPU)")
    p.add_argument("--compile-layers", default="", help="layer counts for a compile-time comparison, e.g. 4,32")
    p.add_argument("--json", action="store_true", help="print one JSON object (all results) instead of the table")
    return p.parse_args()


REFERENCE = {
    "5.28M": ["vocab_size=2048", "hidden_size=256", "intermediate_size=704", "num_layers=6", "num_heads=8",
              "num_kv_heads=2"],
    "8.45M": ["vocab_size=8000", "hidden_size=256", "intermediate_size=688", "num_layers=6", "num_heads=8",
              "num_kv_heads=4"],
}


def model_config(args):
    from msm_jax.config import CONFIGS_DIR, load_config
    from msm_jax.models.config import ModelConfig

    model = args.model or "tiny-llama"
    path = model if model.endswith((".yaml", ".yml")) else CONFIGS_DIR / "models" / f"{model}.yaml"
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


def interleaved_times(steps: list, rounds: int) -> list[list[float]]:
    """Seconds per timed step of each step function, in interleaved rounds so that every variant
    sees the same background load. Each timed step follows an untimed step of the same function,
    the steady state of a training loop. Timed right after another model's step, torch's step ran
    10% slower (784 vs 708 ms at 5.28M, median of 8 rounds; a 1 s sleep in between did not help)
    and ours up to 5% after another of our models; the old order (each variant once per round)
    timed torch right after one of ours."""
    times = [[] for _ in steps]
    for _ in range(rounds):
        for step, out in zip(steps, times):
            step()
            out.append(step())
    return times


def round_ratio_quartiles(ours: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """Quartiles (25th, 50th, 75th percentile) of baseline/ours step time, paired round by round.
    The two steps of a round ran seconds apart, so a slow minute of the machine moves both; the
    spread of these ratios says how far one run's ratio of medians can be trusted."""
    ratios = [b / a for a, b in zip(ours, baseline)]
    if len(ratios) < 2:
        return (ratios[0],) * 3
    low, mid, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return low, mid, high


def cpu_ticks(stat_path: str = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine since boot, from Linux's /proc/stat; None
    where that cannot be read. Steal is time the hypervisor ran something else on this VM's
    vCPUs, which slows both stacks unevenly: a ratio is only worth quoting with the load it ran under."""
    try:
        with open(stat_path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 5 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def machine_load(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict:
    """The load a benchmark ran under: hypervisor steal between two `cpu_ticks` readings, as a
    percentage of all CPU time, and the 1-minute load average at the end (None where unknown)."""
    steal = None
    if before is not None and after is not None and after[1] > before[1]:
        steal = 100.0 * (after[0] - before[0]) / (after[1] - before[1])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"steal_pct": steal, "load_avg_1m": load}


def describe_load(load: dict, during: str = "the timed steps") -> str:
    """One line for a `machine_load` result, e.g. under a benchmark's table."""
    parts = []
    if load["load_avg_1m"] is not None:
        parts.append(f"load average {load['load_avg_1m']:.2f}")
    if load["steal_pct"] is not None:
        parts.append(f"hypervisor steal {load['steal_pct']:.1f}% of CPU time")
    return f"machine during {during}: " + (", ".join(parts) if parts else "unknown")


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


def cases(args) -> list[tuple[str, object]]:
    """(label, model config) pairs: the reference configs x scan_layers, or the one given."""
    if args.model is not None or args.set:
        cfg = model_config(args)
        return [(f"{args.model or 'tiny-llama'} scan_layers={str(cfg.scan_layers).lower()}", cfg)]
    out = []
    for name, overrides in REFERENCE.items():
        for scan in ("true", "false"):
            one = argparse.Namespace(**{**vars(args), "model": None, "set": overrides + [f"scan_layers={scan}"]})
            out.append((f"{name} scan_layers={scan}", model_config(one)))
    return out


def main() -> None:
    args = parse_args()
    from msm_jax import host_memory
    host_memory.reexec_with_huge_pages()  # as `msm` runs: both stacks train in this process, with the same setting
    import jax

    from msm_jax.train.flops import device_peak_tflops, flops_per_token, mfu

    device = jax.devices()[0]
    peak = args.peak_tflops or device_peak_tflops(device.device_kind)
    use_torch = args.baseline == "torch" or (args.baseline == "auto" and jax.default_backend() == "cpu")
    runs = []  # dicts: label, cfg, first, step fn, times; a torch run per distinct architecture
    torch_runs = {}
    for label, cfg in cases(args):
        first, step = jax_stepper(cfg, args)
        step()  # warm
        runs.append({"label": label, "cfg": cfg, "first": first, "step": step})
        arch = dataclasses.replace(cfg, scan_layers=True)
        if use_torch and arch not in torch_runs:
            torch_runs[arch] = {"step": torch_stepper(cfg, args)}
    every = runs + list(torch_runs.values())
    before = cpu_ticks()
    for run, times in zip(every, interleaved_times([run["step"] for run in every], args.steps)):
        run["times"] = times
    load = machine_load(before, cpu_ticks())
    tokens = args.batch * args.seq
    results = {"device": device.device_kind, "devices": jax.device_count(), "batch": args.batch, "seq": args.seq,
               "dtype": args.dtype, "mesh": args.mesh, "steps": args.steps,
               "huge_pages": host_memory.enabled(os.environ), "machine": load, "runs": []}
    if use_torch:
        import torch
        results["torch_threads"] = torch.get_num_threads()
    lines = ["| config | stack | step (median) | tokens/s | vs transformers+torch |", "|---|---|---|---|---|"]
    for i, run in enumerate(runs):
        cfg = run["cfg"]
        step_s = statistics.median(run["times"])
        row = {"label": run["label"], "params_m": round(cfg.num_params() / 1e6, 2), "config": dataclasses.asdict(cfg),
               "first_step_s": run["first"], "step_s": step_s, "tokens_per_s": tokens / step_s,
               "flops_per_token": flops_per_token(cfg, args.seq),
               "mfu": mfu(cfg, args.seq, tokens / step_s, jax.device_count(), peak)}
        base = torch_runs.get(dataclasses.replace(cfg, scan_layers=True))
        if base is not None:
            row["torch_step_s"] = statistics.median(base["times"])
            row["ratio_vs_torch"] = row["torch_step_s"] / step_s
            row["round_ratio_quartiles"] = round_ratio_quartiles(run["times"], base["times"])
        results["runs"].append(row)
        size, _, variant = run["label"].rpartition(" ")
        ratio = "-"
        if "ratio_vs_torch" in row:
            low, _, high = row["round_ratio_quartiles"]
            ratio = f"{row['ratio_vs_torch']:.2f}x (per-round IQR {low:.2f}-{high:.2f})"
        mfu_s = "" if row["mfu"] is None else f", MFU {100 * row['mfu']:.1f}%"
        lines.append(f"| {size} ({row['params_m']}M) | msm-jax {variant} | {1e3 * step_s:.0f} ms | "
                     f"{row['tokens_per_s']:.0f}{mfu_s} | {ratio} |")
        last_of_size = i + 1 == len(runs) or not runs[i + 1]["label"].startswith(size + " ")
        if base is not None and last_of_size:
            lines.append(f"| {size} ({row['params_m']}M) | transformers+torch | {1e3 * row['torch_step_s']:.0f} ms | "
                         f"{tokens / row['torch_step_s']:.0f} | 1.00x |")
    if args.compile_layers:
        cfg = runs[0]["cfg"]
        layers = [int(x) for x in args.compile_layers.split(",")]
        results["compile_s_by_layers"] = {n: compile_seconds(cfg, args, n) for n in layers}
    if args.json:
        print(json.dumps(results, default=str))
        return
    print(f"{jax.device_count()} x {device.device_kind}, {args.dtype}, batch {args.batch} x {args.seq}, mesh {args.mesh}, "
          f"median of {args.steps} interleaved steps (each after an untimed one of its own), "
          f"huge pages {'on' if results['huge_pages'] else 'off'}" + (f", torch {results['torch_threads']} threads" if use_torch else ""))
    print("\n".join(lines))
    print(describe_load(load))
    if "compile_s_by_layers" in results:
        print("compile time (scan over layers): " + ", ".join(
            f"{n} layers {t:.2f} s" for n, t in results["compile_s_by_layers"].items()))


if __name__ == "__main__":
    main()
