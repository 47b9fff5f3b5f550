"""Training FLOPs per token and model FLOPs utilisation (MFU), counted as MaxText does.

  flops/token = 6 * P_matmul + 6 * L * H * D_head * S
  * P_matmul: weights that take part in matmuls: every layer's q, k, v, o, gate, up and
    down projections plus the output head (d * vocab). The input embedding is a lookup
    and norms are elementwise, so neither counts. 6 = 2 (multiply-add) * 3 (forward, and
    a backward pass of twice the forward).
  * attention: per layer and token, QK^T and PV cost 2 * 2 * S * H * D_head in the
    forward; a causal mask halves it; times 3 for forward + backward: 6 * S * H * D_head.
  MFU = flops/token * tokens/s / (devices * peak FLOP/s per device).
The formula is the same whether the layers are LoRA-adapted or not (the adapters are
small, and the backward through frozen weights still computes input gradients).
"""

from __future__ import annotations

from typing import Optional

from msm_jax.models.config import ModelConfig

# Dense bf16 peak TFLOP/s per device (per chip for TPUs), by substring of device_kind.
PEAK_TFLOPS = (("v6", 918.0), ("v5p", 459.0), ("v5 lite", 197.0), ("v5e", 197.0), ("v4", 275.0),
               ("h200", 989.0), ("h100", 989.0), ("a100", 312.0), ("l4", 121.0))


def matmul_params(cfg: ModelConfig) -> int:
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.resolved_head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    attention = 6.0 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    return 6.0 * matmul_params(cfg) + attention


def device_peak_tflops(device_kind: str) -> Optional[float]:
    kind = device_kind.lower()
    for key, tflops in PEAK_TFLOPS:
        if key in kind:
            return tflops
    return None


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_second: float, num_devices: int,
        peak_tflops: Optional[float]) -> Optional[float]:
    """Fraction of peak; None when the device's peak is unknown (e.g. CPU)."""
    if not peak_tflops:
        return None
    return flops_per_token(cfg, seq_len) * tokens_per_second / (num_devices * peak_tflops * 1e12)
