"""`msm run`, `msm sweep` and `msm demo`: whole experiments as graphs of `msm` stage commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from msm_jax.config import CONFIGS_DIR

DEMO_CONFIG = CONFIGS_DIR / "experiments" / "demo.yaml"

RUN_EPILOG = """\
examples:
  msm run configs/experiments/demo.yaml --dry-run
  msm run configs/experiments/demo.yaml out=runs/demo2 arms.america.sft.overrides='[train.seed=1]'
  msm run configs/experiments/demo.yaml out=runs/demo-pod --launcher local-pod --processes 2 --devices-per-process 4
  msm run configs/recipes/llama3.1-8b-cheese.yaml out=/gcs/my-bucket/runs/cheese --launcher tpu --tpu-name msm-v5p --tpu-zone us-east5-a
"""

SWEEP_EPILOG = """\
examples:
  msm sweep configs/sweeps/demo-budgets.yaml --dry-run
  msm sweep configs/sweeps/demo-budgets.yaml
  msm sweep configs/sweeps/llama3.1-8b-budgets.yaml --launcher tpu --dry-run
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help="run an experiment: every stage of every arm, skipping finished ones",
                         description="Run the stages an experiment YAML names (generate -> shards -> midtrain "
                                     "-> sft -> export -> eval) for each of its arms. A stage whose inputs "
                                     "and config are unchanged is skipped; a killed run resumes.",
                         epilog=RUN_EPILOG, formatter_class=fmt)
    run.add_argument("config", type=Path, help="experiment YAML (see configs/experiments/)")
    run.add_argument("overrides", nargs="*", help="key.sub=value overrides of the experiment config")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (stages to run or skip, tokens, steps, API spend) and exit")
    run.add_argument("--only", action="append", default=[], metavar="STAGE",
                     help="run only stages whose id contains this text (and what they need)")
    _launcher_flags(run)
    run.set_defaults(func=_run)

    sweep = sub.add_parser("sweep", help="expand a grid of experiments, run them sharing stages, plot curves",
                           description="Expand SWEEP.yaml's grid (MSM tokens x AFT tokens x spec x seed ...) "
                                       "into runs that share every stage they can, run them, and collect "
                                       "every run's eval results into one table and metric-vs-tokens plots.",
                           epilog=SWEEP_EPILOG, formatter_class=fmt)
    sweep.add_argument("config", type=Path, help="sweep YAML (see configs/sweeps/)")
    sweep.add_argument("overrides", nargs="*", help="key.sub=value overrides of the sweep config")
    sweep.add_argument("--dry-run", action="store_true", help="print the expanded plan and exit")
    _launcher_flags(sweep)
    sweep.set_defaults(func=_sweep)

    demo = sub.add_parser("demo", help="the offline CPU demo: a complete small experiment, then its report",
                          description="Run configs/experiments/demo.yaml: replayed cheese corpora, a tokenizer, "
                                      "a tiny model midtrained on the affordability spec vs the America spec plus "
                                      "an AFT-only control, HF export, the value-generalization eval and a report. "
                                      "No network, no API key.")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument("--config", type=Path, default=DEMO_CONFIG, help="experiment YAML (default: the demo's)")
    demo.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    demo.set_defaults(func=_demo)


def _launcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=["local", "local-pod", "tpu"], default="local",
                   help="local: run stages here, one after another; local-pod: rehearse a multi-host slice "
                        "here (JAX stages as --processes local processes joined by jax.distributed, the "
                        "others once); tpu: run each on a TPU VM through tools/tpu/run_stage.sh (JAX stages "
                        "on every worker, the others on worker 0)")
    p.add_argument("--processes", type=int, default=2, help="local-pod: processes per JAX stage (default 2)")
    p.add_argument("--devices-per-process", type=int, default=4, metavar="D",
                   help="local-pod: fake CPU devices per process (default 4)")
    p.add_argument("--tpu-name", help="TPU VM name (sweeps: overrides the config's tpu.name)")
    p.add_argument("--tpu-zone", help="TPU VM zone (sweeps: overrides tpu.zone)")
    p.add_argument("--tpu-project", help="Google Cloud project (default: gcloud's)")


def _tpu_overrides(args: argparse.Namespace) -> list[str]:
    pairs = (("tpu.name", args.tpu_name), ("tpu.zone", args.tpu_zone), ("tpu.project", args.tpu_project))
    return [f"{k}={v}" for k, v in pairs if v]


def _run(args: argparse.Namespace) -> int:
    from msm_jax.experiment.runner import run_experiment_file

    return run_experiment_file(args.config, args.overrides, dry_run=args.dry_run, only=args.only,
                               launcher=args.launcher, tpu_overrides=_tpu_overrides(args),
                               processes=args.processes, devices=args.devices_per_process)


def _sweep(args: argparse.Namespace) -> int:
    from msm_jax.experiment.sweep import run_sweep_file

    return run_sweep_file(args.config, list(args.overrides) + _tpu_overrides(args), dry_run=args.dry_run,
                          launcher=args.launcher, processes=args.processes, devices=args.devices_per_process)


def _demo(args: argparse.Namespace) -> int:
    import os

    from msm_jax.experiment.runner import run_experiment_file
    from msm_jax.experiment.stages import REPO_ROOT

    config, out = args.config.absolute(), args.out.absolute()
    os.chdir(REPO_ROOT)  # the demo's configs name the shipped specs, corpora and store by repo-relative paths
    return run_experiment_file(config, [f"out={out}"], dry_run=args.dry_run)
