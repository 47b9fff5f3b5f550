"""Tiny random-weight Hugging Face models of each family, built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama", "qwen2", "qwen3")


def make_hf_model(family: str, out_dir: Path, *, seed: int = 0, tie: bool | None = None, dtype: str = "float32"):
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=1, eos_token_id=2)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=bool(tie),
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                                       rope_theta=500000.0)
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common, rms_norm_eps=1e-6, tie_word_embeddings=True if tie is None else tie,
                                       rope_theta=1000000.0)
        cls = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.Qwen3Config(**common, head_dim=32, rms_norm_eps=1e-6,
                                       tie_word_embeddings=bool(tie), rope_theta=1000000.0)
        cls = transformers.Qwen3ForCausalLM
    model = cls(cfg).to(getattr(torch, dtype))
    with torch.no_grad():  # random norm scales and biases, so every tensor is exercised
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model
