"""The train step: one jax.jit over the mesh with explicit in/out shardings.

Micro-batches run inside the step (lax.scan), gradients of loss *sums* accumulate and are
divided once by the global number of loss-bearing tokens, so accumulation equals one big
batch. A step whose loss or gradients are not finite keeps the old weights and optimizer
state (the loop then stops or moves on, as configured): NaN never reaches the weights.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from msm_jax.models.lora import set_dropout_keys
from msm_jax.sharding import logical_to_spec, use_rules
from msm_jax.train.config import TrainConfig
from msm_jax.train.loss import LossSums, model_loss_sums
from msm_jax.train.state import State, TrainSpec


def _micro_batches(batch: dict, count: int, spec: TrainSpec) -> dict:
    """[B, T] -> [count, B/count, T], micro-batch i = rows i, i+count, ... so every device
    keeps an equal share of every micro-batch."""
    sharding = NamedSharding(spec.mesh, logical_to_spec((None, "batch", "length"), rules=spec.rules))

    def split(x):
        x = x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, sharding)

    return {k: split(v) for k, v in batch.items()}


def make_loss_fn(spec: TrainSpec, cfg: TrainConfig) -> Callable:
    def loss_fn(trainable, frozen, batch, dropout_key):
        model = spec.merge(trainable, frozen)
        set_dropout_keys(model, dropout_key)
        sums = model_loss_sums(model, batch, cfg.loss.vocab_chunks)
        return sums.ce + cfg.loss.z_loss * sums.z, sums

    return loss_fn


def make_train_step(spec: TrainSpec, cfg: TrainConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> Callable[[State, dict], tuple[State, dict]]:
    loss_fn = make_loss_fn(spec, cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    base_key = jax.random.key(cfg.seed + 2)

    def gradients(state, batch, key):
        if cfg.grad_accum == 1:
            (_, sums), grads = grad_fn(state["trainable"], state["frozen"], batch, key)
            return grads, sums
        micro = _micro_batches(batch, cfg.grad_accum, spec)
        zero_grads = jax.tree.map(jnp.zeros_like, state["trainable"])
        zero_sums = LossSums(*(jnp.zeros((), jnp.float32),) * 3)

        def body(carry, xs):
            grads, sums = carry
            i, mb = xs
            (_, s), g = grad_fn(state["trainable"], state["frozen"], mb, jax.random.fold_in(key, i))
            return (jax.tree.map(jnp.add, grads, g), sums + s), None

        (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums), (jnp.arange(cfg.grad_accum), micro))
        return grads, sums

    def step(state: State, batch: dict):
        key = jax.random.fold_in(base_key, state["step"])
        grads, sums = gradients(state, batch, key)
        count = jnp.maximum(sums.count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = sums.ce / count
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(sums.z)
        updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {"step": state["step"] + 1, "trainable": keep(trainable, state["trainable"]),
                     "frozen": state["frozen"], "opt_state": keep(opt_state, state["opt_state"])}
        metrics = {"loss": loss, "z_loss": sums.z / count, "grad_norm": grad_norm,
                   "lr": schedule(state["step"]), "loss_tokens": sums.count, "finite": finite}
        return new_state, metrics

    shardings = spec.state_shardings(tx)
    batch_sharding = spec.batch_sharding()
    jitted = jax.jit(step, in_shardings=(shardings, batch_sharding), out_shardings=(shardings, spec.replicated),
                     donate_argnums=0)

    def run(state, batch):
        with jax.set_mesh(spec.mesh), use_rules(spec.rules):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def make_eval_step(spec: TrainSpec, cfg: TrainConfig) -> Callable[[State, dict], LossSums]:
    """Loss sums on a held-out batch, without dropout."""
    loss_fn = make_loss_fn(spec, cfg)

    def evaluate(state, batch):
        return loss_fn(state["trainable"], state["frozen"], batch, None)[1]

    jitted = jax.jit(evaluate, out_shardings=spec.replicated)

    def run(state, batch):
        with jax.set_mesh(spec.mesh), use_rules(spec.rules):
            return jitted(state, batch)

    return run
