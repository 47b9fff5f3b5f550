"""Logit parity between msm-jax and transformers on random batches with padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msm_jax.errors import UserError

# Max |logit difference| allowed, relative to max(1, max |logit|), by compute dtype.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


def random_batch(vocab_size: int, batch: int = 3, length: int = 24, seed: int = 0):
    """Random tokens; row 1 is right-padded, row 2 left-padded (attention_mask 0 = pad)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    if batch > 1:
        mask[1, length * 2 // 3:] = 0
    if batch > 2:
        mask[2, : length // 4] = 0
    return tokens, mask


def msm_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    logits = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
    return np.asarray(logits)[..., : model.cfg.vocab_size]


def hf_logits(hf_dir: str | Path, tokens: np.ndarray, mask: np.ndarray, adapter_dir: str | Path | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def max_logit_difference(model, hf_dir: str | Path, batches: int = 2,
                         adapter_dir: str | Path | None = None) -> tuple[float, float]:
    """(max |difference| on non-padding positions, max |reference logit|)."""
    worst, scale = 0.0, 0.0
    for seed in range(batches):
        tokens, mask = random_batch(model.cfg.vocab_size, seed=seed)
        ours, ref = msm_logits(model, tokens, mask), hf_logits(hf_dir, tokens, mask, adapter_dir)
        real = mask.astype(bool)
        worst = max(worst, float(np.abs(ours - ref)[real].max()))
        scale = max(scale, float(np.abs(ref)[real].max()))
    return worst, scale


def transformers_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def verify_parity(ckpt_dir: str | Path, hf_dir: str | Path, tolerance: float | None = None,
                  step: int | None = None, adapter_dir: str | Path | None = None) -> float:
    """Load both sides in float32, compare logits, raise if beyond tolerance. Returns max diff.
    With `adapter_dir`, the reference is the HF base model with that PEFT adapter applied."""
    from msm_jax import checkpoint

    model, _ = checkpoint.load_model(ckpt_dir, step=step, model_overrides={"param_dtype": "float32",
                                                                           "compute_dtype": "float32"})
    diff, scale = max_logit_difference(model, hf_dir, adapter_dir=adapter_dir)
    tol = (TOLERANCE["float32"] if tolerance is None else tolerance) * max(1.0, scale)
    if not diff <= tol:
        reference = f"transformers ({hf_dir}" + (f" + PEFT adapter {adapter_dir})" if adapter_dir else ")")
        raise UserError(f"parity check failed: max |logit difference| {diff:.3g} between msm-jax "
                        f"({ckpt_dir}) and {reference} exceeds {tol:.3g}")
    return diff


def verify_peft_parity(ckpt_dir: str | Path, base_dir: str | Path, adapter_dir: str | Path,
                       step: int | None = None) -> float:
    return verify_parity(ckpt_dir, base_dir, step=step, adapter_dir=adapter_dir)
