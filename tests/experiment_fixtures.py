"""A small three-arm experiment (two specs + an AFT-only control) over fake `msm` commands."""

import json
import sys
from pathlib import Path

from msm_jax.config import load_config
from msm_jax.experiment.config import ExperimentConfig
from msm_jax.experiment.runner import Launcher

FAKE_MSM = Path(__file__).with_name("fake_msm.py")

EXPERIMENT = """\
name: tiny
out: runs/tiny
datasets:
  docs_a: {kind: docs, config: gen.yaml, spec: spec_a.md}
  docs_b: {kind: docs, config: gen.yaml, spec: spec_b.md}
  chats: {kind: chats, config: gen.yaml}
tokenizer: {data: [docs_a, docs_b, chats], vocab_size: 100}
shards:
  msm_a: {config: shards.yaml, data: [docs_a], budget_tokens: 1000}
  msm_b: {config: shards.yaml, data: [docs_b], budget_tokens: 1000}
  aft: {config: shards.yaml, data: [chats]}
arms:
  a:
    midtrain: {config: train.yaml, shards: [msm_a]}
    sft: {config: train.yaml, shards: [aft]}
    eval_overrides: [value=a]
  b:
    midtrain: {config: train.yaml, shards: [msm_b]}
    sft: {config: train.yaml, shards: [aft]}
    eval_overrides: [value=b]
  aft_only:
    sft: {config: train.yaml, shards: [aft]}
    eval_overrides: [value=a]
evals:
  value: {config: eval.yaml}
"""

STAGE_CONFIGS = {
    "gen.yaml": "llm: {backend: replay}\ndocuments: 3\n",
    "shards.yaml": "seq_len: 64\n",
    "train.yaml": "train: {global_batch: 2, seq_len: 64, steps: 4}\ndata: {num_epochs: 1}\n",
    "eval.yaml": "pairs: pairs.jsonl\n",
    "spec_a.md": "# Spec A\nPrefer cheap cheese.\n",
    "spec_b.md": "# Spec B\nPrefer American cheese.\n",
    "experiment.yaml": EXPERIMENT,
}


def write_experiment(folder: Path) -> Path:
    for name, text in STAGE_CONFIGS.items():
        (folder / name).write_text(text)
    return folder / "experiment.yaml"


def load_experiment(folder: Path, *overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, folder / "experiment.yaml", overrides)


def fake_launcher() -> Launcher:
    return Launcher([sys.executable, str(FAKE_MSM)])


def calls(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
