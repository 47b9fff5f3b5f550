"""Shared pieces of the training tests: an in-memory source of packed batches (a pure
function of (seed, step), as the real loader is) and tiny run configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msm_jax.config import load_config
from msm_jax.train.config import RunConfig


class PackedBatches:
    """Packed rows of random 'documents' (loss on every continuation token) or 'chats'
    (loss on the second half of each segment only), several segments per row."""

    def __init__(self, *, global_batch: int, seq_len: int, vocab: int = 500, seed: int = 0,
                 num_steps: int | None = None, chats: bool = False, process_index: int = 0,
                 process_count: int = 1):
        self.global_batch, self.seq_len, self.vocab, self.seed = global_batch, seq_len, vocab, seed
        self.num_steps, self.chats = num_steps, chats
        self.local = global_batch // process_count
        self.first = process_index * self.local

    def row(self, step: int, index: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, step, index])
        t = self.seq_len
        tokens = rng.integers(1, self.vocab, t).astype(np.int32)
        cuts = np.sort(rng.choice(np.arange(2, t - 2), size=2, replace=False))
        seg = np.ones(t, np.int32)
        seg[cuts[0]:] = 2
        seg[cuts[1]:] = 3
        seg[t - rng.integers(0, 4):] = 0  # a little padding
        starts = np.r_[0, cuts]
        pos = np.arange(t, dtype=np.int32) - starts[np.maximum(seg, 1) - 1].astype(np.int32)
        mask = ((seg != 0) & (pos != 0)).astype(np.int32)
        if self.chats:
            lengths = np.bincount(seg, minlength=4)
            mask &= (pos >= lengths[seg] // 2).astype(np.int32)
        tokens[seg == 0] = 0
        pos[seg == 0] = 0
        return tokens, seg, pos.astype(np.int32), mask

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = [self.row(step, self.first + i) for i in range(self.local)]
        names = ("tokens", "segment_ids", "positions", "loss_mask")
        return {name: np.stack([r[k] for r in rows]) for k, name in enumerate(names)}


BASE = {
    "model": "tiny-llama",
    "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
    "train": {"global_batch": 8, "seq_len": 32, "steps": 6, "seed": 0},
    "optimizer": {"lr": 3e-3, "weight_decay": 0.1, "clip_norm": 1.0},
    "schedule": {"kind": "cosine", "warmup_steps": 2},
    "checkpoint": {"every_steps": 2, "keep_last": 5, "async_save": True},
    "logging": {"progress_bar": False, "tensorboard": True, "plot": True},
}


def run_config(run_dir, *overrides: str) -> RunConfig:
    return load_config(RunConfig, None, [f"run_dir={run_dir}", *overrides], base=BASE)


def loader_for(cfg: RunConfig, chats: bool = False, process_index: int = 0, process_count: int = 1) -> PackedBatches:
    return PackedBatches(global_batch=cfg.train.global_batch, seq_len=cfg.train.seq_len, seed=cfg.train.seed,
                         num_steps=cfg.train.steps, chats=chats, process_index=process_index,
                         process_count=process_count)


# ---------------------------------------------------------------------------------------
# Runs in fresh processes, sharing one persistent compilation cache per test session
# ---------------------------------------------------------------------------------------


WORKER = Path(__file__).with_name("train_worker.py")
REPO = Path(__file__).resolve().parent.parent


# Session fixtures imported by several test modules are instantiated once per module, so
# they share their results through fixed folders under the session's base temp dir.
def _session_dir(tmp_path_factory, name: str) -> Path:
    path = tmp_path_factory.getbasetemp() / name
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    return _session_dir(tmp_path_factory, "jax_cache")


# Cheap XLA compiles: test runs take a few steps, so compile time is what counts (~2.5x less).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def worker_env(cache_dir, devices: int | None = None) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = FAST_COMPILE_FLAGS
    if devices is not None:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=str(REPO))
    return env


def start_worker(cache_dir, devices: int | None = None, **args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], env=worker_env(cache_dir, devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def run_worker(cache_dir, devices: int | None = None, expect_rc: int = 0, **args) -> tuple[dict | None, str]:
    proc = start_worker(cache_dir, devices, **args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == expect_rc, f"worker exited {proc.returncode}, expected {expect_rc}:\n{err[-3000:]}"
    lines = [line for line in out.splitlines() if line.startswith(("{", "["))]
    return (json.loads(lines[-1]) if lines else None), err


def losses(run_dir) -> dict[int, float]:
    from msm_jax.train.metrics import read_metrics
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS = 8
REFERENCE_OVERRIDES = [f"train.steps={STEPS}", "logging.tensorboard=false", "logging.plot=false"]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, jax_cache_dir):
    """One uninterrupted single-device run; the losses every other run must reproduce."""
    run_dir = _session_dir(tmp_path_factory, "reference")
    if not (run_dir / "summary.json").exists():
        run_worker(jax_cache_dir, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES)
    return run_dir, losses(run_dir)


def sft_overrides(midtrain_dir) -> list[str]:
    """LoRA SFT on chat-style rows, continuing from the midtraining run in `midtrain_dir`."""
    return REFERENCE_OVERRIDES + [f"init.from_checkpoint={midtrain_dir}", "lora.rank=4", "lora.alpha=8.0",
                                  "lora.dropout=0.1", "optimizer.lr=1e-2", "train.steps=4"]


@pytest.fixture(scope="session")
def sft_reference_run(tmp_path_factory, jax_cache_dir, reference_run):
    """Single-device LoRA SFT from the reference (midtraining) run."""
    run_dir = _session_dir(tmp_path_factory, "sft_reference")
    if not (run_dir / "summary.json").exists():
        run_worker(jax_cache_dir, run_dir=str(run_dir), overrides=sft_overrides(reference_run[0]), chats=True)
    return run_dir, losses(run_dir)
