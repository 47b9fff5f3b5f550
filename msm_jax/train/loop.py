"""The run loop of one training stage: resume or initialise, step, log, checkpoint, stop.

Batch k is `loader.batch(k)` and the dropout key of step k is derived from (seed, k), so
the state restored from the checkpoint of step k plus these pure functions reproduce the
uninterrupted run exactly, on any mesh and any process count.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Optional

from msm_jax.config import to_dict, to_yaml
from msm_jax.errors import UserError
from msm_jax.train.config import RunConfig

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


class NonFiniteLoss(UserError):
    """The loss or the gradients of a step were not finite; the update was not applied."""


class Preemption:
    """Remembers a SIGTERM so the loop can checkpoint and exit between two steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """True if any process got SIGTERM (all processes must checkpoint together)."""
        import jax

        if jax.process_count() == 1:
            return self.requested
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))


def _log_dir(cfg: RunConfig) -> Path:
    from msm_jax.checkpoint import is_remote

    if is_remote(cfg.run_dir):
        raise UserError(f"run_dir {cfg.run_dir}: metrics and the summary are written to a local folder; "
                        "set run_dir to a local path and checkpoint.directory to the gs:// location")
    return Path(cfg.run_dir)


def checkpoint_dir(cfg: RunConfig) -> str:
    return cfg.checkpoint.directory or cfg.run_dir


def _make_loader(cfg: RunConfig, loader: Any):
    if loader is not None:
        return loader
    import jax

    from data_pipeline.loader import make_train_loader

    if cfg.data is None:
        raise UserError("data: no training data configured (data.sources: [{path: SHARD_DIR}])")
    return make_train_loader(cfg.data, global_batch=cfg.train.global_batch, seq_len=cfg.train.seq_len,
                             seed=cfg.train.seed, process_index=jax.process_index(),
                             process_count=jax.process_count())


def _make_eval_loader(cfg: RunConfig, eval_loader: Any):
    if eval_loader is not None or cfg.eval.data is None:
        return eval_loader
    import dataclasses

    import jax

    from data_pipeline.loader import make_train_loader

    data = dataclasses.replace(cfg.eval.data, shuffle=False, num_epochs=None)
    return make_train_loader(data, global_batch=cfg.train.global_batch, seq_len=cfg.train.seq_len,
                             seed=cfg.train.seed, process_index=jax.process_index(),
                             process_count=jax.process_count())


def total_steps(cfg: RunConfig, loader: Any) -> int:
    available = getattr(loader, "num_steps", None)
    steps = cfg.train.steps if cfg.train.steps is not None else available
    if not steps:
        raise UserError("train.steps is not set and the data has no end (set train.steps or data.num_epochs)")
    if available is not None and steps > available:
        raise UserError(f"train.steps={steps} but the data holds only {available} global batches of "
                        f"{cfg.train.global_batch} rows (data.num_epochs={getattr(cfg.data, 'num_epochs', None)}); "
                        "lower train.steps or raise data.num_epochs")
    return int(steps)


class Trainer:
    """One stage's run; `run()` returns the summary dict."""

    def __init__(self, cfg: RunConfig, *, loader: Any = None, eval_loader: Any = None):
        import jax

        from msm_jax import checkpoint
        from msm_jax.sharding import make_mesh
        from msm_jax.train.init import resolve_model_config
        from msm_jax.train.optimizer import decay_mask, learning_rate, make_optimizer
        from msm_jax.train.state import TrainSpec
        from msm_jax.train.step import make_eval_step, make_train_step

        self.cfg = cfg
        self.log_dir = _log_dir(cfg)
        self.is_main = jax.process_index() == 0
        self.loader = _make_loader(cfg, loader)
        self.eval_loader = _make_eval_loader(cfg, eval_loader)
        self.total_steps = total_steps(cfg, self.loader)
        self.model_cfg = resolve_model_config(cfg)
        for source in (self.loader, self.eval_loader):  # shard loaders know their tokenizer's size
            getattr(source, "check_vocab", lambda n: None)(self.model_cfg.vocab_size)
        self.mesh = make_mesh(cfg.mesh)
        self.spec = TrainSpec.create(self.model_cfg, cfg.lora, self.mesh, cfg.mesh.resolved_rules())
        self.schedule = learning_rate(cfg.optimizer, cfg.schedule, self.total_steps)
        self.tx = make_optimizer(cfg.optimizer, self.schedule, decay_mask(self.spec.abstract_trainable))
        self.train_step = make_train_step(self.spec, cfg.train, self.tx, self.schedule)
        self.eval_step = make_eval_step(self.spec, cfg.train) if self.eval_loader is not None else None
        self.meta = checkpoint.make_meta(self.model_cfg, lora=to_dict(cfg.lora) if cfg.lora else None,
                                         stage_init=to_dict(cfg.init))
        self.loss_tokens_seen = 0.0

    # -- state --------------------------------------------------------------------------

    def _restore_or_init(self) -> tuple[dict, int]:
        import jax

        from msm_jax import checkpoint
        from msm_jax.train.init import initial_weights
        from msm_jax.train.state import init_state

        abstract = self.spec.abstract_state(self.tx)
        lora = self.cfg.lora is not None
        items, broken = checkpoint.restore_latest_train_step(
            checkpoint_dir(self.cfg), params_target=abstract["frozen"] if lora else abstract["trainable"],
            lora_target=abstract["trainable"] if lora else None, opt_target=abstract["opt_state"])
        self._set_aside(broken)
        if items is None:
            trainable, frozen = initial_weights(self.cfg, self.spec)
            return init_state(self.spec, self.tx, trainable, frozen), 0
        info = items["train"]
        self._check_same_data_order(info)
        step = int(info["step"])
        self.loss_tokens_seen = float(info.get("loss_tokens_seen", 0.0))
        state = {"step": jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), self.spec.replicated),
                 "trainable": items["lora"] if lora else items["params"],
                 "frozen": items["params"] if lora else {}, "opt_state": items["opt_state"]}
        return state, step

    def _set_aside(self, broken: list[int]) -> None:
        """Broken newer steps would block saving those step numbers again: move them aside."""
        import jax

        if not broken:
            return
        from msm_jax import checkpoint

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("msm_restored")
        if self.is_main:
            for step in broken:
                checkpoint.set_aside(checkpoint_dir(self.cfg), step)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("msm_set_aside")

    def _check_same_data_order(self, info: dict) -> None:
        data = info.get("data", {})
        expected = {"seed": self.cfg.train.seed, "global_batch": self.cfg.train.global_batch}
        for key, value in expected.items():
            if data.get(key) != value:
                raise UserError(f"{checkpoint_dir(self.cfg)}: the checkpoint was written with train.{key}="
                                f"{data.get(key)!r} but the config now says {value!r}; resuming would "
                                "repeat or skip data (use a new run_dir, or restore the old value)")
        if data.get("next_row") != info["step"] * self.cfg.train.global_batch:
            raise UserError(f"{checkpoint_dir(self.cfg)}: checkpoint data position {data.get('next_row')} does not "
                            f"match step {info['step']}")

    def _train_info(self, step: int) -> dict:
        return {"step": step, "seed": self.cfg.train.seed, "dropout_rng": {"seed": self.cfg.train.seed + 2,
                                                                           "fold_in": "step"},
                "data": {"seed": self.cfg.train.seed, "global_batch": self.cfg.train.global_batch,
                         "next_step": step, "next_row": step * self.cfg.train.global_batch},
                "loss_tokens_seen": self.loss_tokens_seen,
                "tokens_seen": step * self.cfg.train.global_batch * self.cfg.train.seq_len}

    def _save(self, mngr, state: dict, step: int) -> None:
        from msm_jax import checkpoint

        lora = self.cfg.lora is not None
        checkpoint.save_train_step(mngr, step, params=state["frozen"] if lora else state["trainable"],
                                   lora=state["trainable"] if lora else None, opt_state=state["opt_state"],
                                   meta=self.meta, train_info=self._train_info(step))

    # -- the loop -----------------------------------------------------------------------

    def _global_batch(self, step: int) -> dict:
        import jax

        local = self.loader.batch(step)
        sharding = self.spec.batch_sharding()
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}

    def _eval_loss(self, state: dict) -> float:
        import jax

        totals = None
        for i in range(self.cfg.eval.batches):
            local = self.eval_loader.batch(i)
            batch = {k: jax.make_array_from_process_local_data(self.spec.batch_sharding(), v)
                     for k, v in local.items()}
            sums = self.eval_step(state, batch)
            totals = sums if totals is None else totals + sums
        return float(totals.ce) / max(float(totals.count), 1.0)

    def _write_config(self) -> None:
        if self.is_main:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / CONFIG_FILE).write_text(to_yaml(self.cfg))

    def run(self) -> dict:
        import jax

        from msm_jax import checkpoint
        from msm_jax.train.flops import device_peak_tflops, mfu
        from msm_jax.train.metrics import MetricsWriter, plot_loss_curve

        cfg = self.cfg
        self._write_config()
        state, start = self._restore_or_init()
        if start >= self.total_steps:
            log.warning("%s: already trained to step %d of %d", cfg.run_dir, start, self.total_steps)
        peak = cfg.logging.device_peak_tflops or device_peak_tflops(jax.devices()[0].device_kind)
        tokens_per_step = cfg.train.global_batch * cfg.train.seq_len
        writer = MetricsWriter(self.log_dir, enabled=self.is_main, tensorboard=cfg.logging.tensorboard,
                               progress_bar=cfg.logging.progress_bar, start_step=start, total_steps=self.total_steps)
        if start:
            writer.note(f"resumed {cfg.run_dir} from step {start}")
        mngr = checkpoint.train_manager(checkpoint_dir(cfg), keep_last=cfg.checkpoint.keep_last,
                                        keep_every=cfg.checkpoint.keep_every, async_save=cfg.checkpoint.async_save)
        started = time.time()
        status, last_metrics, last_saved = "completed", {}, start
        step_seconds: list[float] = []
        compile_seconds: Optional[float] = None
        try:
            with Preemption() as preemption:
                for step in range(start, self.total_steps):
                    t0 = time.time()
                    state, metrics = self.train_step(state, self._global_batch(step))
                    metrics = {k: v.item() for k, v in jax.device_get(metrics).items()}
                    elapsed = time.time() - t0
                    if compile_seconds is None:
                        compile_seconds = elapsed
                    else:
                        step_seconds.append(elapsed)
                    done = step + 1
                    if not metrics.pop("finite"):
                        what = f"loss={metrics['loss']}, grad_norm={metrics['grad_norm']}"
                        if cfg.train.on_nonfinite == "stop":
                            raise NonFiniteLoss(
                                f"step {step}: non-finite {what}; the update was not applied and no checkpoint "
                                f"was written after step {last_saved}. Lower optimizer.lr, check the data of "
                                f"step {step}, or set train.on_nonfinite=skip")
                        log.warning("step %d: non-finite %s; update skipped", step, what)
                    self.loss_tokens_seen += metrics["loss_tokens"]
                    tokens_per_s = tokens_per_step / elapsed
                    metrics.update(tokens_per_s=tokens_per_s, step_time_s=elapsed,
                                   mfu=mfu(self.model_cfg, cfg.train.seq_len, tokens_per_s, jax.device_count(), peak))
                    if self.eval_step is not None and done % cfg.eval.every_steps == 0:
                        metrics["eval_loss"] = self._eval_loss(state)
                    if done % cfg.logging.every_steps == 0 or done == self.total_steps:
                        writer.log(done, metrics)
                    last_metrics = metrics
                    preempted = preemption.agreed()
                    if done % cfg.checkpoint.every_steps == 0 or done == self.total_steps or preempted:
                        self._save(mngr, state, done)
                        last_saved = done
                    if preempted:
                        status = "preempted"
                        writer.note(f"SIGTERM: checkpoint of step {done} written; exiting")
                        break
        finally:
            mngr.wait_until_finished()
            mngr.close()
            writer.close()
        summary = self._summary(status, last_saved, started, step_seconds, compile_seconds, last_metrics, peak)
        if self.is_main:
            (self.log_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
            if cfg.logging.plot:
                plot_loss_curve(self.log_dir)
        return summary

    def _summary(self, status, step, started, step_seconds, compile_seconds, last, peak) -> dict:
        import jax

        from msm_jax.train.flops import mfu

        mean_step = sum(step_seconds) / len(step_seconds) if step_seconds else math.nan
        tokens_per_s = self.cfg.train.global_batch * self.cfg.train.seq_len / mean_step if step_seconds else None
        return {"status": status, "steps": step, "total_steps": self.total_steps,
                "tokens_seen": step * self.cfg.train.global_batch * self.cfg.train.seq_len,
                "loss_tokens_seen": self.loss_tokens_seen, "wall_time_s": round(time.time() - started, 3),
                "first_step_s": compile_seconds, "mean_step_s": None if not step_seconds else mean_step,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu(self.model_cfg, self.cfg.train.seq_len, tokens_per_s, jax.device_count(), peak)
                if tokens_per_s else None,
                "final_loss": last.get("loss"), "final_eval_loss": last.get("eval_loss"),
                "devices": jax.device_count(), "processes": jax.process_count()}


def train(cfg: RunConfig, *, loader: Any = None, eval_loader: Any = None) -> dict:
    """Run one training stage (initialising jax.distributed first when configured)."""
    from msm_jax.distributed import initialize

    initialize(cfg.distributed)
    return Trainer(cfg, loader=loader, eval_loader=eval_loader).run()
