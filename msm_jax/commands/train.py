"""`msm train CONFIG.yaml [key=value ...]`: run (or resume) one training stage."""

from __future__ import annotations

import argparse
import logging

EXAMPLES = """\
examples:
  msm train configs/train/tiny-midtrain.yaml
  msm train configs/train/tiny-sft.yaml run_dir=runs/sft2 train.steps=50 mesh.fsdp=4 mesh.tensor=2
  msm train configs/train/recipes/msm-sft-qwen3-8b-lora.yaml lora.rank=16 optimizer.lr=2e-4

An existing run_dir resumes from its latest complete checkpoint. SIGTERM (preemption)
writes a checkpoint and exits with status 143.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="run one training stage (midtraining or SFT)",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="run config YAML (see configs/train/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from msm_jax.config import load_config
    from msm_jax.train.config import RunConfig
    from msm_jax.train.loop import train

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(RunConfig, args.config, args.overrides)
    summary = train(cfg)
    loss = summary["final_loss"]
    print(f"msm train: {summary['status']} at step {summary['steps']}/{summary['total_steps']}, "
          f"{summary['tokens_seen']} tokens, final loss {loss if loss is None else round(loss, 4)}, "
          f"run dir {cfg.run_dir}")
    return 143 if summary["status"] == "preempted" else 0
