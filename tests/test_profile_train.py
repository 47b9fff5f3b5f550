"""tools/profile_train.py: the attention stand-ins of `--ablate-attention` are the same
computation on both stacks, with attention's shapes (GQA included)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import profile_train  # noqa: E402


def test_attention_stand_ins_agree_across_stacks_and_keep_attentions_shape():
    import torch

    from msm_jax.models.attention import xla_attention

    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 8, 4, 16), np.float32)  # [B, T, H, D]
    k, v = (rng.standard_normal((2, 8, 2, 16), np.float32) for _ in range(2))  # 2 KV heads
    seg = np.ones((2, 8), np.int32)
    ours = np.asarray(profile_train._stand_in(q, k, v))
    assert ours.shape == np.asarray(xla_attention(q, k, v, seg, seg)).shape
    as_torch = [torch.from_numpy(x).transpose(1, 2) for x in (q, k, v)]  # transformers' [B, H, T, D]
    theirs = profile_train._torch_stand_in(*as_torch, is_causal=True).transpose(1, 2).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
