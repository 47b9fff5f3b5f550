"""The parameter-name table between msm-jax and Hugging Face.

msm-jax names mirror HF names, so the table is a rule, not a list:
`layers.<module path>.kernel` (stacked [L, in, out]) <-> `model.layers.<i>.<module path>.weight`
([out, in], one per layer), `scale` <-> `weight`, `bias` <-> `bias`. Embedding and output
head carry padded vocab rows in msm-jax; HF tensors have exactly `vocab_size` rows.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from msm_jax.models.config import ModelConfig

ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One msm-jax parameter and the HF tensor(s) it corresponds to."""

    path: tuple[str, ...]  # msm-jax parameter path, e.g. ("layers", "self_attn", "q_proj", "kernel")
    hf_names: tuple[str, ...]  # one per layer for stacked parameters, else a single name
    transpose: bool  # HF stores [out, in]; msm-jax kernels are [in, out]
    vocab_axis: int | None  # axis of the msm-jax array padded to padded_vocab_size
    hf_shape: tuple[int, ...]  # shape of each HF tensor

    @property
    def stacked(self) -> bool:
        return self.path[0] == "layers"

    @property
    def key(self) -> str:
        """The parameter's key inside the Orbax `params` item."""
        return ".".join(self.path)


def layer_params(cfg: ModelConfig) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(module path, HF shape) of every per-layer parameter for this config."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.resolved_head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    out: list[tuple[tuple[str, ...], tuple[int, ...]]] = [
        (("input_layernorm", "scale"), (d,)),
        (("post_attention_layernorm", "scale"), (d,)),
        (("self_attn", "q_proj", "kernel"), (q, d)),
        (("self_attn", "k_proj", "kernel"), (kv, d)),
        (("self_attn", "v_proj", "kernel"), (kv, d)),
        (("self_attn", "o_proj", "kernel"), (d, q)),
        (("mlp", "gate_proj", "kernel"), (f, d)),
        (("mlp", "up_proj", "kernel"), (f, d)),
        (("mlp", "down_proj", "kernel"), (d, f)),
    ]
    if cfg.qkv_bias:
        out += [(("self_attn", "q_proj", "bias"), (q,)), (("self_attn", "k_proj", "bias"), (kv,)),
                (("self_attn", "v_proj", "bias"), (kv,))]
    if cfg.qk_norm:
        out += [(("self_attn", "q_norm", "scale"), (hd,)), (("self_attn", "k_norm", "scale"), (hd,))]
    return out


def _hf_leaf(leaf: str) -> str:
    return {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]


def tensor_maps(cfg: ModelConfig) -> Iterator[TensorMap]:
    """Every msm-jax parameter of `cfg` with its HF counterpart, in HF file order."""
    v, d = cfg.vocab_size, cfg.hidden_size
    yield TensorMap(("embed_tokens",), ("model.embed_tokens.weight",), False, 0, (v, d))
    for module, shape in layer_params(cfg):
        names = tuple(f"model.layers.{i}.{'.'.join(module[:-1])}.{_hf_leaf(module[-1])}"
                      for i in range(cfg.num_layers))
        yield TensorMap(("layers",) + module, names, module[-1] == "kernel", None, shape)
    yield TensorMap(("norm", "scale"), ("model.norm.weight",), False, None, (d,))
    if not cfg.tie_embeddings:
        yield TensorMap(("lm_head", "kernel"), ("lm_head.weight",), True, 1, (v, d))


def lora_target_name(module_path: tuple[str, ...], layer: int) -> str:
    """HF module name of a projection, e.g. model.layers.3.self_attn.q_proj (for PEFT keys)."""
    return f"model.layers.{layer}.{'.'.join(module_path)}"
