"""The decoder: packed segments stay apart, every layout and kernel path agrees with the
XLA reference, the KV cache reproduces the full forward pass, sharding changes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msm_jax.config import load_config
from msm_jax.models import attention as attn
from msm_jax.models.build import build_model
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import init_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(name: str, **changes) -> ModelConfig:
    cfg = load_config(ModelConfig, os.path.join(ROOT, "configs", "models", f"{name}.yaml"))
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2", "tiny-qwen3"])
def model(request):
    return build_model(tiny(request.param), seed=1)


def packed_row(lengths, total, vocab, seed=0):
    """One packed row of documents with the given lengths, zero-padded to `total`."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, vocab, n) for n in lengths]
    tokens = np.zeros(total, np.int32)
    seg = np.zeros(total, np.int32)
    pos = np.zeros(total, np.int32)
    at = 0
    for i, d in enumerate(docs):
        tokens[at:at + len(d)], seg[at:at + len(d)], pos[at:at + len(d)] = d, i + 1, np.arange(len(d))
        at += len(d)
    return docs, tokens[None], seg[None], pos[None]


def test_packed_documents_do_not_attend_to_each_other(model):
    docs, tokens, seg, pos = packed_row([7, 12, 5], 28, model.cfg.vocab_size)
    packed = np.asarray(model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg)))
    at = 0
    for d in docs:
        alone = np.asarray(model(jnp.asarray(d[None])))
        np.testing.assert_allclose(packed[0, at:at + len(d)], alone[0], atol=2e-5)
        at += len(d)


def test_padded_vocab_columns_are_never_predicted(model):
    logits = np.asarray(model(jnp.ones((1, 4), jnp.int32)))
    assert logits.shape[-1] == model.cfg.padded_vocab_size > model.cfg.vocab_size
    assert (logits[..., model.cfg.vocab_size:] <= -1e8).all()


def test_unrolled_and_rematerialised_layers_match_scan():
    cfg = tiny("tiny-qwen3")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)))
    ref = np.asarray(build_model(cfg)(tokens))
    for changes in ({"scan_layers": False}, {"remat_policy": "full"}, {"remat_policy": "dots_with_no_batch_dims"},
                    {"remat_policy": "none"}):
        out = np.asarray(build_model(dataclasses.replace(cfg, **changes))(tokens))
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=str(changes))


def test_bfloat16_compute_tracks_float32():
    cfg = tiny("tiny-llama")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)))
    ref = np.asarray(build_model(cfg)(tokens))[..., : cfg.vocab_size]
    low = build_model(dataclasses.replace(cfg, compute_dtype="bfloat16"))(tokens)
    assert low.dtype == jnp.float32  # logits are always fp32
    assert np.abs(np.asarray(low)[..., : cfg.vocab_size] - ref).max() < 0.05


def test_kv_cache_prefill_and_decode_reproduce_the_full_forward(model):
    cfg = model.cfg
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, cfg.vocab_size, (2, 12)))
    full = np.asarray(model(tokens))
    cache = init_cache(cfg, batch=2, max_len=16)
    seg = jnp.ones((2, 8), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    logits, cache = model(tokens[:, :8], pos, seg, cache=cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, :8], atol=2e-5)
    for t in range(8, 12):
        logits, cache = model(tokens[:, t:t + 1], jnp.full((2, 1), t), jnp.ones((2, 1), jnp.int32), cache=cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=2e-5)
    assert int(cache["index"]) == 12


def _qkv(seed=0, b=2, t=32, h=4, kv=2, d=16):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, d)), jnp.float32) for n in (h, kv, kv))
    seg = np.zeros((b, t), np.int32)
    seg[0, :10], seg[0, 10:25], seg[0, 25:30] = 1, 2, 3  # three documents, then padding
    seg[1, :] = 1
    return q, k, v, jnp.asarray(seg)


def test_xla_attention_matches_naive_per_segment_softmax():
    q, k, v, seg = _qkv()
    out = np.asarray(attn.xla_attention(q, k, v, seg, seg))
    qn, kn, vn, sn = map(np.asarray, (q, k, v, seg))
    for b in range(2):
        for t in range(32):
            if sn[b, t] == 0:
                continue
            keys = [s for s in range(t + 1) if sn[b, s] == sn[b, t]]
            for h in range(4):
                scores = kn[b, keys, h // 2] @ qn[b, t, h] / 4.0
                p = np.exp(scores - scores.max())
                p /= p.sum()
                np.testing.assert_allclose(out[b, t, h], p @ vn[b, keys, h // 2], atol=1e-5)


def _autodiff_attention(q, k, v, seg):
    """Masked softmax attention written plainly, differentiated by JAX itself."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(q.shape[-1])
    mask = attn.attention_mask(seg, seg)[:, None]
    probs = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("t", [32, 30, 31, 640])  # causal query blocks: 4, 3, one, 10 (of 64 queries)
def test_xla_attention_gradients_equal_autodiff_of_the_plain_softmax(t):
    assert attn.causal_blocks(t) == {32: 4, 30: 3, 31: 1, 640: 10}[t]
    q, k, v, seg = _qkv(seed=1, t=max(t, 32))
    q, k, v, seg = q[:, :t], k[:, :t], v[:, :t], seg[:, :t]
    weights = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32) * (seg != 0)[..., None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, seg) * weights)

    ours = jax.jit(jax.grad(loss(lambda q, k, v, s: attn.xla_attention(q, k, v, s, s)), argnums=(0, 1, 2)))(q, k, v)
    ref = jax.jit(jax.grad(loss(_autodiff_attention), argnums=(0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=f"d{name}")


def test_remat_policies_and_unrolled_layers_give_the_same_gradients():
    from msm_jax.train.loss import model_loss_sums

    cfg = tiny("tiny-qwen3")
    rng = np.random.default_rng(4)
    seg = np.repeat(np.where(np.arange(16) < 9, 1, 2)[None], 2, 0).astype(np.int32)
    batch = {"tokens": jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 16)), jnp.int32), "segment_ids": jnp.asarray(seg),
             "positions": jnp.asarray(np.where(seg == 1, np.arange(16), np.arange(16) - 9), jnp.int32),
             "loss_mask": jnp.ones((2, 16), jnp.int32)}
    from flax import nnx

    def grads(**changes):
        graphdef, state = nnx.split(build_model(dataclasses.replace(cfg, **changes)))
        fn = lambda st: model_loss_sums(nnx.merge(graphdef, st), batch).ce  # noqa: E731
        return jax.tree.leaves(jax.jit(jax.grad(fn))(state))  # compiled: eager scans under grad are slow

    ref = grads(remat_policy="none")
    for changes in ({}, {"remat_policy": "full"}, {"scan_layers": False}):
        for a, b in zip(grads(**changes), ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=str(changes))


@pytest.mark.parametrize("impl,backend", [("cudnn", "gpu"), ("splash", "tpu")])
def test_accelerator_kernels_match_xla_reference_on_packed_rows(impl, backend):
    if jax.default_backend() != backend:
        pytest.skip(f"{impl} attention needs a {backend.upper()}; this run has {jax.default_backend()}")
    q, k, v, seg = _qkv(t=128, d=64)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    ref = np.asarray(attn.xla_attention(q, k, v, seg, seg), np.float32)
    out = np.asarray(attn.attention(q, k, v, seg, seg, impl=impl), np.float32)
    real = np.asarray(seg) != 0
    assert np.abs(out - ref)[real].max() < 2e-2


def test_auto_attention_picks_the_reference_on_cpu():
    assert attn.resolve_impl("auto") == {"cpu": "xla", "gpu": "cudnn", "tpu": "splash"}[jax.default_backend()]


SHARDED = textwrap.dedent("""
    import os, json, sys
    os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                               "--xla_llvm_disable_expensive_passes=true")
    import jax, numpy as np, jax.numpy as jnp
    from flax import nnx
    sys.path.insert(0, sys.argv[1])
    from msm_jax.config import load_config
    from msm_jax.models.config import ModelConfig
    from msm_jax.models.build import build_model
    from msm_jax.sharding import MeshConfig, make_mesh
    cfg = load_config(ModelConfig, sys.argv[1] + "/configs/models/tiny-qwen2.yaml")
    tok = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)))
    ref = np.asarray(nnx.jit(lambda m, x: m(x))(build_model(cfg, seed=2), tok))
    out = {}
    for d, f, t in [(1, 2, 4)]:   # data8 / fsdp8 / 2x2x2 are covered by tests/test_train_layouts.py
        mesh = make_mesh(MeshConfig(data=d, fsdp=f, tensor=t))
        m = build_model(cfg, mesh, seed=2)
        with jax.set_mesh(mesh):
            logits = nnx.jit(lambda m, x: m(x))(m, tok)
        spec = str(m.layers.mlp.gate_proj.kernel[...].sharding.spec)
        out[f"{d}x{f}x{t}"] = [float(np.abs(np.asarray(logits) - ref).max()), spec]
    print(json.dumps(out))
""")


def test_forward_on_eight_devices_split_over_fsdp_and_tensor_matches_one_device():
    proc = subprocess.run([sys.executable, "-c", SHARDED, ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for layout, (diff, spec) in result.items():
        assert diff < 1e-5, layout
    assert "fsdp" in result["1x2x4"][1] and "tensor" in result["1x2x4"][1]
