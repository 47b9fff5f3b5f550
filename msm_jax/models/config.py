"""The decoder's configuration: one dataclass for Llama 3.x, Qwen2.5 and Qwen3.

Family differences are flags (`qkv_bias`, `qk_norm`, `tie_embeddings`, `rope_scaling`),
not separate model classes. Presets live in `configs/models/*.yaml`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

Family = Literal["llama", "qwen2", "qwen3"]
DType = Literal["float32", "bfloat16", "float16"]
RematPolicy = Literal["none", "full", "dots", "dots_with_no_batch_dims", "projections"]
AttentionImpl = Literal["auto", "xla", "cudnn", "splash"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama-3.1 style frequency-dependent RoPE scaling (`rope_type: llama3`)."""

    rope_type: Literal["llama3"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: Optional[int] = None  # None: hidden_size // num_heads (Qwen3 sets it explicitly)
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2.5
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    # Execution options (not part of the HF architecture).
    param_dtype: DType = "float32"
    compute_dtype: DType = "float32"
    scan_layers: bool = True
    # What the backward pass keeps of each layer: "projections" keeps the outputs of the
    # q/k/v/o and MLP matmuls and the attention output and log-sum-exp, and recomputes the
    # elementwise ops (and, with the xla kernel, nothing else); "none" keeps everything XLA
    # chooses to, "full" only each layer's input.
    remat_policy: RematPolicy = "projections"
    attention_impl: AttentionImpl = "auto"
    vocab_pad_multiple: int = 128  # embedding rows padded so the vocab axis shards evenly
    init_std: float = 0.02

    def validate(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads when head_dim is not set")
        if self.resolved_head_dim % 2:
            raise ValueError("head_dim must be even for RoPE")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "vocab_pad_multiple"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_pad_multiple
        return (self.vocab_size + m - 1) // m * m

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count of the HF architecture (unpadded vocab)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.resolved_head_dim
        q, kv = self.num_heads * hd, self.num_kv_heads * hd
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0)
        attn += 2 * hd if self.qk_norm else 0
        layer = attn + 3 * d * f + 2 * d
        total = self.num_layers * layer + d
        if include_embedding:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total
