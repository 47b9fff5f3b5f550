"""What a user sees of a run: a progress bar, metrics.jsonl, TensorBoard events, loss_curve.png.

Only process 0 writes. On resume, metrics of steps after the restored checkpoint (logged
by the interrupted run, about to be recomputed) are dropped from the JSONL, and
TensorBoard is told to purge them, so every step appears once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_curve.png"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill -9 mid-write
            continue
    return records


def truncate_metrics(run_dir: str | os.PathLike, last_step: int) -> None:
    """Keep only records of steps <= last_step (the restored checkpoint's)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", math.inf) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


class MetricsWriter:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool, tensorboard: bool, progress_bar: bool,
                 start_step: int, total_steps: int):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.run_dir, start_step)
        self._file = open(self.run_dir / METRICS_FILE, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        if progress_bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        """Metrics of the optimizer step that ended at `step` (1-based count of steps done)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: v for k, v in metrics.items() if v is not None}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None:
            shown = {"loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}",
                     "tok/s": f"{metrics.get('tokens_per_s', 0):.0f}"}
            if metrics.get("mfu") is not None:
                shown["mfu"] = f"{100 * metrics['mfu']:.1f}%"
            self._bar.set_postfix(shown, refresh=False)
            self._bar.n = step
            self._bar.refresh()

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


def plot_loss_curve(run_dir: str | os.PathLike, out: Optional[Path] = None) -> Optional[Path]:
    """loss_curve.png from metrics.jsonl (train loss, and eval loss when present)."""
    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    out = out or Path(run_dir) / PLOT_FILE
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
