"""Device mesh and logical-axis sharding.

Every parameter and main activation is annotated with *logical* axis names (`embed`,
`mlp`, `heads`, ...). One rules table maps those names to the mesh axes `data`, `fsdp`
and `tensor`; changing a parallelism layout is a config edit, never a code edit.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from msm_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("lora_rank", None),
    ("norm", None),
    # activations: the hidden size stays unsharded between layers (sequence of
    # all-gathers happens on weights under fsdp, not on activations).
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar("msm_rules", default=DEFAULT_RULES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Mesh shape; one axis may be -1 to take all remaining devices."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    # Extra or replacement rules, e.g. {"vocab": null} to replicate the embedding.
    rules: dict[str, Optional[list[str] | str]] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        sizes = [self.data, self.fsdp, self.tensor]
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError("at most one of data/fsdp/tensor may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError("mesh axis sizes must be positive or -1")

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ConfigError(f"mesh: data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} does not divide the "
                                  f"{num_devices} device(s) here")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ConfigError(f"mesh: data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                              f"{math.prod(sizes)} devices, but {num_devices} are present")
        return tuple(sizes)  # type: ignore[return-value]

    def resolved_rules(self) -> tuple:
        merged = dict(DEFAULT_RULES)
        for key, value in self.rules.items():
            merged[key] = tuple(value) if isinstance(value, (list, tuple)) else value
        return tuple(merged.items())


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A mesh over all devices of all processes (Auto axis types: XLA propagates)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = cfg.shape(len(devices))
    try:
        from jax.experimental import mesh_utils
        dev_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # non-TPU topologies mesh_utils cannot reason about
        dev_array = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(dev_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


@contextlib.contextmanager
def use_rules(rules: Sequence[tuple[str, object]]):
    token = _RULES.set(tuple(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> tuple:
    return _RULES.get()


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int] | None = None,
                    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
                    rules: Sequence[tuple[str, object]] | None = None) -> PartitionSpec:
    """PartitionSpec for logical `axes`; a mesh axis is used at most once, and dropped
    where it does not divide the dimension (given `shape` and `mesh`)."""
    table = dict(rules if rules is not None else current_rules())
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule")
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        kept = []
        for ax in mesh_axes:
            if ax in used:
                continue
            if mesh is not None and shape is not None:
                size = mesh.shape[ax]
                done = math.prod(mesh.shape[a] for a in kept)
                if shape[i] % (done * size):
                    continue
            kept.append(ax)
            used.add(ax)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def named_sharding(mesh: jax.sharding.Mesh, axes: Sequence[Optional[str]],
                   shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
    """Sharding constraint on an activation; a no-op when no mesh is active."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))
