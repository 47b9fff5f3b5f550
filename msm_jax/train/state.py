"""The train state, created directly in its sharded form.

State = {"step", "trainable", "frozen", "opt_state"}, all pure pytrees (nested dicts of
arrays), so Orbax saves them as they are and restores them onto any mesh given a target.
Full fine-tuning: `trainable` is every `nnx.Param`, `frozen` is empty. LoRA: `trainable`
holds only the adapters (so only they get AdamW moments) and `frozen` the base weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from msm_jax.models.build import state_shardings
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.models.lora import LoRAConfig, LoRAParam, apply_lora
from msm_jax.sharding import logical_to_spec, use_rules

State = dict[str, Any]


def _build(model_cfg: ModelConfig, lora_cfg: Optional[LoRAConfig], seed: int) -> Decoder:
    model = Decoder(model_cfg, nnx.Rngs(seed))
    if lora_cfg is not None:
        apply_lora(model, lora_cfg, seed=seed + 1)
    return model


def _with_shardings(abstract: nnx.State, mesh) -> nnx.State:
    shardings = state_shardings(abstract, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@dataclasses.dataclass
class TrainSpec:
    """Everything static about a run's state: model structure, shardings, optimizer."""

    model_cfg: ModelConfig
    lora_cfg: Optional[LoRAConfig]
    mesh: jax.sharding.Mesh
    graphdef: Any
    abstract_trainable: nnx.State  # ShapeDtypeStructs with shardings, axes metadata kept
    abstract_frozen: nnx.State
    rules: tuple  # logical -> mesh axis rules

    @classmethod
    def create(cls, model_cfg: ModelConfig, lora_cfg: Optional[LoRAConfig], mesh, rules) -> "TrainSpec":
        model = nnx.eval_shape(lambda: _build(model_cfg, lora_cfg, 0))
        graphdef, trainable, frozen = nnx.split(model, nnx.Param if lora_cfg is None else LoRAParam, ...)
        with use_rules(rules):
            return cls(model_cfg, lora_cfg, mesh, graphdef, _with_shardings(trainable, mesh),
                       _with_shardings(frozen, mesh), tuple(rules))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def trainable_shardings(self) -> dict:
        return jax.tree.map(lambda a: a.sharding, nnx.to_pure_dict(self.abstract_trainable))

    def frozen_shardings(self) -> dict:
        return jax.tree.map(lambda a: a.sharding, nnx.to_pure_dict(self.abstract_frozen))

    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(("batch", "length"), rules=self.rules))

    def merge(self, trainable: dict, frozen: dict) -> Decoder:
        """A Decoder from pure trees (inside jit: a traced model)."""
        t = jax.tree.map(lambda x: x, self.abstract_trainable)
        f = jax.tree.map(lambda x: x, self.abstract_frozen)
        nnx.replace_by_pure_dict(t, trainable)
        if frozen:
            nnx.replace_by_pure_dict(f, frozen)
        return nnx.merge(self.graphdef, t, f)

    def opt_shardings(self, tx: optax.GradientTransformation) -> Any:
        """Optimizer-state shardings: moments like their parameters, the rest replicated."""
        abstract = nnx.to_pure_dict(self.abstract_trainable)
        opt_shape = jax.eval_shape(tx.init, abstract)
        return optax.tree_map_params(tx, lambda _, s: s, opt_shape, self.trainable_shardings(),
                                     transform_non_params=lambda _: self.replicated)

    def state_shardings(self, tx: optax.GradientTransformation) -> State:
        return {"step": self.replicated, "trainable": self.trainable_shardings(),
                "frozen": self.frozen_shardings(), "opt_state": self.opt_shardings(tx)}

    def abstract_state(self, tx: optax.GradientTransformation) -> State:
        """ShapeDtypeStructs with this mesh's shardings: the restore target."""
        trainable = nnx.to_pure_dict(self.abstract_trainable)
        opt = jax.eval_shape(tx.init, trainable)
        shardings = self.state_shardings(tx)
        shapes = {"step": jax.ShapeDtypeStruct((), jnp.int32), "trainable": trainable,
                  "frozen": nnx.to_pure_dict(self.abstract_frozen), "opt_state": opt}
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def _split_pure(spec: TrainSpec, seed: int) -> tuple[dict, dict]:
    graph = _build(spec.model_cfg, spec.lora_cfg, seed)
    _, trainable, frozen = nnx.split(graph, nnx.Param if spec.lora_cfg is None else LoRAParam, ...)
    return nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)


def random_params(spec: TrainSpec, seed: int) -> tuple[dict, dict]:
    """(trainable, frozen) from a seeded random init, created on their shards; the values
    do not depend on the mesh (partitionable threefry)."""
    with jax.set_mesh(spec.mesh):
        return jax.jit(lambda: _split_pure(spec, seed),
                       out_shardings=(spec.trainable_shardings(), spec.frozen_shardings()))()


def fresh_adapters(spec: TrainSpec, seed: int) -> dict:
    """New LoRA weights only (the base model's random init is traced but is dead code)."""
    with jax.set_mesh(spec.mesh):
        return jax.jit(lambda: _split_pure(spec, seed)[0], out_shardings=spec.trainable_shardings())()


def init_state(spec: TrainSpec, tx: optax.GradientTransformation, trainable: dict, frozen: dict) -> State:
    with jax.set_mesh(spec.mesh):
        opt_state = jax.jit(tx.init, out_shardings=spec.opt_shardings(tx))(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), spec.replicated)
    return {"step": step, "trainable": trainable, "frozen": frozen, "opt_state": opt_state}
