"""Building models directly in their sharded form: never materialised whole on one host."""

from __future__ import annotations

import jax
from flax import nnx

from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.sharding import logical_to_spec


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
    """NamedSharding per variable from its `axes` metadata (replicated if it has none)."""

    def one(var):
        axes = var.get_metadata().get("axes")
        value = var.get_value()
        spec = logical_to_spec(axes, value.shape, mesh) if axes else jax.sharding.PartitionSpec()
        return var.replace(jax.sharding.NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(cfg: ModelConfig, mesh: jax.sharding.Mesh | None = None):
    """(graphdef, state of ShapeDtypeStructs carrying the target shardings)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))))
    if mesh is None:
        return graphdef, state
    shardings = state_shardings(state, mesh)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)
    return graphdef, state


def build_model(cfg: ModelConfig, mesh: jax.sharding.Mesh | None = None, seed: int = 0) -> Decoder:
    """A randomly initialised Decoder whose parameters are created on their shards."""
    if mesh is None:
        return Decoder(cfg, nnx.Rngs(seed))
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(seed))))
    shardings = state_shardings(abstract, mesh)

    def init():
        return nnx.state(Decoder(cfg, nnx.Rngs(seed)))

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)
