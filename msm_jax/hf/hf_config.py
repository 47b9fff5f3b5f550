"""Translate between HF `config.json` and msm-jax's ModelConfig (both directions)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from msm_jax.errors import UserError
from msm_jax.models.config import ModelConfig, RopeScaling

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise UserError(f"{hf_dir}: not a directory")
    if not path.is_file():
        raise UserError(f"{hf_dir}: no config.json (is this a Hugging Face model directory?)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object")
    return cfg


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def model_config_from_hf(hf: dict, where: str = "config.json", **options: Any) -> ModelConfig:
    """ModelConfig for an HF config dict; `options` sets execution fields (dtypes, scan...)."""
    family = hf.get("model_type")
    if family not in ARCHITECTURES:
        raise UserError(f"{where}: unsupported model_type {family!r} (supported: {', '.join(ARCHITECTURES)})")

    def need(key: str) -> Any:
        if key not in hf:
            raise UserError(f"{where}: missing required field {key!r}")
        return hf[key]

    if hf.get("mlp_bias"):
        raise UserError(f"{where}: mlp_bias=true is not supported")
    if family == "llama" and hf.get("attention_bias"):
        raise UserError(f"{where}: attention_bias=true is not supported for llama")
    if family == "qwen2" and hf.get("use_sliding_window"):
        raise UserError(f"{where}: use_sliding_window=true is not supported")
    rope = dict(hf.get("rope_parameters") or {})  # transformers >= 5
    legacy = hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    scaling = None
    if rope_type == "llama3":
        src = rope if rope.get("rope_type") == "llama3" else legacy
        scaling = RopeScaling(factor=float(src["factor"]), low_freq_factor=float(src["low_freq_factor"]),
                              high_freq_factor=float(src["high_freq_factor"]),
                              original_max_position_embeddings=int(src["original_max_position_embeddings"]))
    elif rope_type != "default":
        raise UserError(f"{where}: rope scaling type {rope_type!r} is not supported (default and llama3 are)")
    heads = need("num_attention_heads")
    fields = dict(
        family=family,
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim"),
        rope_theta=float(theta),
        rope_scaling=scaling,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        bos_token_id=_first_id(hf.get("bos_token_id")),
        eos_token_id=_first_id(hf.get("eos_token_id")),
        pad_token_id=_first_id(hf.get("pad_token_id")),
    )
    if fields["head_dim"] == fields["hidden_size"] // heads and family != "qwen3":
        fields["head_dim"] = None
    fields.update(options)
    try:
        cfg = ModelConfig(**fields)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None
    return cfg


def hf_config_from_model(cfg: ModelConfig, dtype: str) -> dict:
    """config.json for `cfg`, readable by transformers 4.x/5.x and vLLM (legacy rope keys)."""
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "torch_dtype": TORCH_DTYPES[dtype],
    }
    if cfg.family == "llama":
        hf.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    if cfg.family == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
    if cfg.family == "qwen3":
        hf.update(attention_bias=False, use_sliding_window=False, sliding_window=None,
                  max_window_layers=cfg.num_layers)
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {"rope_type": "llama3", **{k: v for k, v in dataclasses.asdict(cfg.rope_scaling).items()
                                                        if k != "rope_type"}}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(cfg, key) is not None:
            hf[key] = getattr(cfg, key)
    return hf


def generation_config(cfg: ModelConfig) -> dict:
    out: dict[str, Any] = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(cfg, key) is not None:
            out[key] = getattr(cfg, key)
    return out
