"""LoRA adapters on the decoder's projections: y = x W + (alpha / r) * dropout(x) A B.

An adapter hangs on a `Linear` as its `lora` attribute. Layers are stacked, so A is
[layers, in, r] and B is [layers, r, out], with `layers` first in their axes; the scan
over layers slices them like every other layer parameter. A starts as PEFT's
Kaiming-uniform, B as zeros, so a fresh adapter leaves the model unchanged.
Adapter weights are `LoRAParam` variables, not `nnx.Param`: the base parameter tree
(`nnx.state(model, nnx.Param)`) stays the checkpoint's `params` item unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from msm_jax.models.decoder import DTYPES, Decoder, Linear

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
ALL_TARGETS = ATTENTION_TARGETS + MLP_TARGETS


class LoRAParam(nnx.Variable):
    """A trainable LoRA weight (A or B)."""


class LoRADropoutKey(nnx.Variable):
    """Per-layer raw PRNG keys [layers, 2] for LoRA dropout, set by the train step."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ALL_TARGETS

    def validate(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in ALL_TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"targets: unknown module {unknown[0] if unknown else '(none given)'}; "
                             f"choose from {list(ALL_TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRA(nnx.Module):
    def __init__(self, kernel: nnx.Param, cfg: LoRAConfig, dtype, key: jax.Array):
        layers, in_dim, out_dim = kernel.shape
        _, in_axis, out_axis = kernel.get_metadata()["axes"]
        bound = 1.0 / in_dim ** 0.5  # kaiming_uniform(a=sqrt(5)), as PEFT initialises A
        a = jax.random.uniform(key, (layers, in_dim, cfg.rank), jnp.float32, -bound, bound)
        self.a = LoRAParam(a.astype(dtype), axes=("layers", in_axis, "lora_rank"))
        self.b = LoRAParam(jnp.zeros((layers, cfg.rank, out_dim), dtype), axes=("layers", "lora_rank", out_axis))
        self.scale = cfg.scale
        self.dropout = cfg.dropout
        self.dropout_key = nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout > 0 and self.dropout_key is not None:
            key = jax.random.wrap_key_data(self.dropout_key[...])
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        h = jnp.dot(x, self.a[...].astype(x.dtype))
        return jnp.dot(h, self.b[...].astype(x.dtype)) * jnp.asarray(self.scale, x.dtype)


def target_linears(model: Decoder, targets: tuple[str, ...] = ALL_TARGETS) -> Iterator[tuple[tuple[str, str], Linear]]:
    """((group, name), Linear) of the stacked projections, e.g. (("self_attn", "q_proj"), ...)."""
    for group, names in (("self_attn", ATTENTION_TARGETS), ("mlp", MLP_TARGETS)):
        for name in names:
            if name in targets:
                yield (group, name), getattr(getattr(model.layers, group), name)


def apply_lora(model: Decoder, cfg: LoRAConfig, seed: int = 0) -> Decoder:
    """Attach fresh adapters to the target projections (in place; returns the model)."""
    dtype = DTYPES[model.cfg.param_dtype]
    key = jax.random.key(seed)
    for i, (_, linear) in enumerate(target_linears(model, cfg.targets)):
        linear.lora = nnx.data(LoRA(linear.kernel, cfg, dtype, jax.random.fold_in(key, i)))
    return model


def lora_adapters(model: Decoder) -> Iterator[tuple[tuple[str, str], LoRA]]:
    for path, linear in target_linears(model):
        if linear.lora is not None:
            yield path, linear.lora


def set_dropout_keys(model: Decoder, key: Optional[jax.Array]) -> None:
    """Give every adapter fresh per-layer dropout keys (None: no dropout, as in eval)."""
    for i, (_, lora) in enumerate(lora_adapters(model)):
        if lora.dropout <= 0:
            continue
        if key is None:
            lora.dropout_key = nnx.data(None)
        else:
            keys = jax.random.split(jax.random.fold_in(key, i), model.cfg.num_layers)
            lora.dropout_key = LoRADropoutKey(jax.random.key_data(keys))


@functools.partial(jax.jit, static_argnums=3)
def _merged(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """W + scale * A B, per layer, in the kernel's dtype (computed in fp32). The sum over the
    rank is a running sum of outer products rather than a dot: XLA picks dot kernels by shard
    shape, and this way every sharding of the kernel gives the same bits."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    delta = a[..., 0:1] * b[:, None, 0, :]
    for j in range(1, a.shape[-1]):
        delta = delta + a[..., j:j + 1] * b[:, None, j, :]
    return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)


def merged_kernel(linear: Linear) -> jax.Array:
    lora = linear.lora
    return _merged(linear.kernel[...], lora.a[...], lora.b[...], lora.scale)


def merge_lora(model: Decoder) -> Decoder:
    """Fold every adapter into its base kernel and remove it (in place; returns the model)."""
    for _, linear in target_linears(model):
        if linear.lora is not None:
            linear.kernel[...] = merged_kernel(linear)
            linear.lora = None
    return model


def merge_lora_params(params: dict, adapters: dict, scale: float) -> dict:
    """The pure params tree with every adapter of the pure `adapters` tree folded in. A pure
    function of arrays: jitted over trees sharded like training, each device merges its own
    shard of every kernel and nothing is gathered."""
    out = jax.tree.map(lambda x: x, params)  # new dicts, same arrays
    for group, modules in adapters["layers"].items():
        for name, module in modules.items():
            kernel = params["layers"][group][name]["kernel"]
            out["layers"][group][name]["kernel"] = _merged(kernel, module["lora"]["a"], module["lora"]["b"], scale)
    return out


def lora_state(model: Decoder) -> nnx.State:
    return nnx.state(model, LoRAParam)
