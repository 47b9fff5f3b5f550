"""AdamW with a weight-decay mask, global-norm clipping, and warmup-then-decay schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from msm_jax.train.config import OptimizerConfig, ScheduleConfig

NO_DECAY_AXES = {"layers"}  # the stacking axis does not make a vector a matrix


def learning_rate(opt: OptimizerConfig, sched: ScheduleConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `opt.lr` over warmup_steps (step 0 gets lr/warmup), then cosine,
    linear or constant to `lr * final_lr_ratio` at the last step."""
    peak, final = opt.lr, opt.lr * sched.final_lr_ratio
    warmup = sched.warmup_steps
    decay_steps = max(total_steps - warmup - 1, 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1) / max(warmup, 1)
        t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if sched.kind == "cosine":
            decayed = final + (peak - final) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        elif sched.kind == "linear":
            decayed = peak + (final - peak) * t
        else:
            decayed = jnp.asarray(peak, jnp.float32)
        return jnp.where(step < warmup, warm, decayed)

    return schedule


def decay_mask(state: nnx.State) -> dict:
    """Pure dict of bools: decay matrices, not norms or biases (vectors apart from `layers`)."""

    def one(var):
        axes = var.get_metadata().get("axes") or (None,) * var.get_value().ndim
        return sum(1 for a in axes if a not in NO_DECAY_AXES) >= 2

    masks = jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.to_pure_dict(masks) if isinstance(masks, nnx.State) else masks


def make_optimizer(opt: OptimizerConfig, schedule: optax.Schedule, mask: dict) -> optax.GradientTransformation:
    parts = []
    if opt.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(opt.clip_norm))
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                             weight_decay=opt.weight_decay, mask=mask))
    return optax.chain(*parts)
