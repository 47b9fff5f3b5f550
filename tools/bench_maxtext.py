"""msm-jax's train step against MaxText's on the same model and batch, on this machine, in one run.

  python tools/bench_maxtext.py --maxtext-python /path/to/maxtext-venv/bin/python [--rounds 3] [--json]
  PYTHONPATH=. /path/to/maxtext-venv/bin/python tools/bench_maxtext.py   # both stacks on MaxText's JAX

MaxText is not a dependency of msm-jax (MaxText 0.2.5 needs Python >= 3.12 and JAX >= 0.11.1); point
--maxtext-python at an interpreter that has it (`pip install maxtext==0.2.5` and the requirements it ships in
`dependencies/requirements/generated_requirements/decoupled-requirements.txt`). Run the script itself with that
interpreter (and PYTHONPATH=.) to time both stacks on the same JAX version.

The two reference configs of tools/bench_train.py (fp32 AdamW, batch 8 x 256) are trained, round by round,
by MaxText's own trainer (`maxtext.trainers.pre_train.train`, synthetic data, no checkpoints or TensorBoard,
one fresh process per config and round, its `remat_policy` and `scan_layers` as given) and by msm-jax's
train step in this process (its defaults: scan_layers=true, remat `projections`). MaxText's step time is its
own log's per-step `seconds` (wall time between step completions, its host work overlapped with the running
step by asynchronous dispatch); ours is each step blocked on in turn, consecutive steps after warm-up steps. The
MaxText processes inherit this process's environment, so both stacks run with the same allocator settings (huge
pages, see msm_jax/host_memory.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402

STEP_LINE = re.compile(r"completed step: (\d+), seconds: ([0-9.]+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maxtext-python", default=sys.executable,
                   help="Python interpreter with `maxtext` installed (default: this one)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each trains every config once in both stacks")
    p.add_argument("--steps", type=int, default=12, help="timed steps per config, stack and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (MaxText: its steps 0..warmup-1)")
    p.add_argument("--maxtext-remat", default="minimal_with_context",
                   help="MaxText remat_policy (its fastest by its own docs; 'full' is its default)")
    p.add_argument("--maxtext-scan", choices=["true", "false"], default="true", help="MaxText scan_layers")
    p.add_argument("--configs", default=",".join(bench_train.REFERENCE),
                   help="reference configs to run, comma-separated (default: all of tools/bench_train.py's)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per MaxText process")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    for name in ("rounds", "steps", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in bench_train.REFERENCE]
    if unknown or not args.configs:
        p.error(f"--configs: unknown {unknown or 'none given'}; choose from {', '.join(bench_train.REFERENCE)}")
    return args


def reference_configs(names=None) -> dict:
    """name -> msm-jax ModelConfig for bench_train's reference configs, with msm-jax's defaults."""
    out = {}
    for name, overrides in bench_train.REFERENCE.items():
        if names is not None and name not in names:
            continue
        ns = argparse.Namespace(model=None, set=overrides, dtype="float32", remat="projections")
        out[name] = bench_train.model_config(ns)
    return out


def maxtext_overrides(cfg, args, batch: int, seq: int, out_dir: str) -> list[str]:
    """MaxText `key=value` overrides describing the same model, batch and optimizer as `cfg`."""
    return [
        "run_name=bench", f"base_output_directory={out_dir}", "hardware=cpu", "dataset_type=synthetic",
        f"steps={args.warmup + args.steps}", f"per_device_batch_size={batch}", f"max_target_length={seq}",
        f"base_emb_dim={cfg.hidden_size}", f"base_num_query_heads={cfg.num_heads}",
        f"base_num_kv_heads={cfg.num_kv_heads}", f"base_mlp_dim={cfg.intermediate_size}",
        f"base_num_decoder_layers={cfg.num_layers}", f"head_dim={cfg.resolved_head_dim}",
        f"vocab_size={cfg.vocab_size}",
        f"rope_max_timescale={int(cfg.rope_theta)}", f"normalization_layer_epsilon={cfg.rms_norm_eps}",
        "decoder_block=llama2", "dtype=float32", "weight_dtype=float32", "opt_type=adamw",
        f"logits_via_embedding={str(cfg.tie_embeddings).lower()}",
        f"remat_policy={args.maxtext_remat}", f"scan_layers={args.maxtext_scan}", "attention=dot_product",
        "enable_checkpointing=false", "enable_tensorboard=false", "enable_goodput_recording=false",
        "skip_jax_distributed_system=true",
    ]


def step_seconds(log: str, warmup: int) -> list[float]:
    """MaxText's per-step seconds from its log, steps >= warmup (step 0 includes compilation)."""
    return [float(s) for step, s in STEP_LINE.findall(log) if int(step) >= warmup]


def maxtext_info(python: str) -> dict:
    """MaxText's package directory and the versions it runs on; a clear error where it is missing."""
    code = ("import json, os, jax, maxtext, importlib.metadata as m; print(json.dumps({'dir': "
            "os.path.dirname(maxtext.__file__), 'maxtext': m.version('maxtext'), 'jax': jax.__version__, "
            "'python': '.'.join(map(str, __import__('sys').version_info[:3]))}))")
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"--maxtext-python {python}: cannot run it ({e})")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"--maxtext-python {python}: cannot import maxtext and jax ({last}); install MaxText "
                         f"there first (see this script's --help)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_maxtext(python: str, config_yml: str, overrides: list[str], timeout: float) -> str:
    """One MaxText training process; its combined log. Fails loudly (with the log's tail) on error."""
    env = {**os.environ, "DECOUPLE_GCLOUD": "TRUE"}
    cmd = [python, "-m", "maxtext.trainers.pre_train.train", config_yml, *overrides]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"MaxText ran past --timeout {timeout:g} s; raise it for a slower machine") from None
    log = done.stdout + done.stderr
    if done.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise SystemExit(f"MaxText exited with {done.returncode}:\n{tail}")
    return log


def ours_stepper(cfg, batch: int, seq: int):
    """A function running one msm-jax train step and returning its seconds (bench_train's stepper)."""
    ns = argparse.Namespace(mesh="data=1,fsdp=-1,tensor=1", lora_rank=0, batch=batch, seq=seq, grad_accum=1)
    _, one = bench_train.jax_stepper(cfg, ns)
    return one


def main(argv=None) -> None:
    args = parse_args(argv)
    from msm_jax import host_memory
    host_memory.reexec_with_huge_pages()
    import jax

    info = maxtext_info(args.maxtext_python)
    config_yml = os.path.join(info["dir"], "configs", "base.yml")
    batch, seq = 8, 256
    configs = reference_configs(args.configs)
    steppers = {name: ours_stepper(cfg, batch, seq) for name, cfg in configs.items()}
    times = {name: {"msm_jax": [], "maxtext": []} for name in configs}
    before = bench_train.cpu_ticks()
    with tempfile.TemporaryDirectory(prefix="msm_bench_maxtext_") as out_dir:  # MaxText's run folder
        for _ in range(args.rounds):
            for name, cfg in configs.items():
                log = run_maxtext(args.maxtext_python, config_yml,
                                  maxtext_overrides(cfg, args, batch, seq, out_dir), args.timeout)
                got = step_seconds(log, args.warmup)
                if not got:
                    raise SystemExit(f"MaxText ({name}) logged no 'completed step' lines past step {args.warmup}")
                times[name]["maxtext"].extend(got)
                one = steppers[name]
                for _ in range(args.warmup):
                    one()
                times[name]["msm_jax"].extend(one() for _ in range(args.steps))
    load = bench_train.machine_load(before, bench_train.cpu_ticks())
    tokens = batch * seq
    results = {"batch": batch, "seq": seq, "dtype": "float32", "rounds": args.rounds, "steps": args.steps,
               "msm_jax": {"jax": jax.__version__, "python": ".".join(map(str, sys.version_info[:3])),
                           "scan_layers": True, "remat_policy": "projections"},
               "maxtext": {**{k: v for k, v in info.items() if k != "dir"}, "remat_policy": args.maxtext_remat,
                           "scan_layers": args.maxtext_scan == "true", "attention": "dot_product"},
               "huge_pages": host_memory.enabled(os.environ), "machine": load, "configs": {}}
    lines = ["| config | stack | step (median) | tokens/s | msm-jax speed-up |", "|---|---|---|---|---|"]
    for name, cfg in configs.items():
        ours = statistics.median(times[name]["msm_jax"])
        theirs = statistics.median(times[name]["maxtext"])
        results["configs"][name] = {"params_m": round(cfg.num_params() / 1e6, 2), "msm_jax_step_s": ours,
                                    "maxtext_step_s": theirs, "speedup_vs_maxtext": theirs / ours,
                                    "msm_jax_times": times[name]["msm_jax"], "maxtext_times": times[name]["maxtext"]}
        lines.append(f"| {name} | msm-jax (jax {jax.__version__}) | {1e3 * ours:.0f} ms | {tokens / ours:.0f} | "
                     f"**{theirs / ours:.2f}x** |")
        lines.append(f"| {name} | MaxText {info['maxtext']} (jax {info['jax']}) | {1e3 * theirs:.0f} ms | "
                     f"{tokens / theirs:.0f} | 1.00x |")
    if args.json:
        print(json.dumps(results))
        return
    print(f"fp32 AdamW, batch {batch} x {seq}, {args.rounds} rounds x {args.steps} steps per stack and config; "
          f"MaxText remat {args.maxtext_remat}, scan_layers {args.maxtext_scan}; msm-jax defaults")
    print("\n".join(lines))
    print(bench_train.describe_load(load, during="the run"))


if __name__ == "__main__":
    main()
