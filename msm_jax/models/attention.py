"""Attention with segment ids, behind one function that picks the kernel.

`xla` is the reference every other path is tested against. Packed rows hold several
documents; a query attends only to keys of the same segment, at or before its slot.
Segment id 0 marks padding (and empty KV-cache slots).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from msm_jax.sharding import constrain


def resolve_impl(impl: str) -> str:
    """`auto` -> the best kernel for the default backend."""
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "tpu":
        return "splash"
    if backend == "gpu":
        return "cudnn"
    return "xla"


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_offset: jax.Array | int = 0) -> jax.Array:
    """[B, T, S] boolean: same non-padding segment and causal in slot order."""
    t, s = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    q_slot = jnp.arange(t)[:, None] + q_offset
    kv_slot = jnp.arange(s)[None, :]
    causal = kv_slot <= q_slot
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return same & (kv_segment_ids[:, None, :] != 0) & causal[None]


def xla_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=0):
    """Reference path: GQA as batched matmuls over [B, KV, group*T, D] and a masked fp32 softmax.

    Heads come first and each KV head's query group is folded into the query dimension, so
    both dots (and their gradients) are plain batched matmuls over (B, KV) and the large
    [.., T, S] score tensors are never transposed; only the small q/k/v/output are.
    """
    b, t, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    group = h // kv_heads
    q = q * jnp.asarray(1.0 / jnp.sqrt(jnp.float32(d)), q.dtype)
    q = q.reshape(b, t, kv_heads, group, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, group * t, d)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, D]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    # The mask tiled over the group (row g*T + t is query t) keeps scores, softmax and the
    # second dot in one shape, so the backward pass saves the probabilities once.
    mask = jnp.tile(attention_mask(q_segment_ids, kv_segment_ids, q_offset), (1, group, 1))[:, None]
    # A finite fill keeps fully masked (padding) rows NaN-free; their outputs are unused.
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv_heads, group, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=0):
    """cuDNN fused attention; the segment/causal structure goes in as a boolean mask."""
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=0):
    """TPU splash attention (Pallas) with segment ids, mapped over batch and heads."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, h, d = q.shape
    if t != k.shape[1] or not isinstance(q_offset, int) or q_offset != 0:
        return xla_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset)  # decode steps
    group = h // k.shape[2]
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    scale = 1.0 / jnp.sqrt(jnp.float32(d)).astype(q.dtype)

    def one(qb, kb, vb, qs, ks):
        seg = sk.SegmentIds(q=qs, kv=ks)
        # splash wants [heads, length, head_dim]
        return kernel(qb.swapaxes(0, 1) * scale, kb.swapaxes(0, 1), vb.swapaxes(0, 1), segment_ids=seg).swapaxes(0, 1)

    return jax.vmap(one)(q, k, v, q_segment_ids, kv_segment_ids)


_IMPLS = {"xla": xla_attention, "cudnn": cudnn_attention, "splash": splash_attention}


def attention(q, k, v, q_segment_ids, kv_segment_ids, *, impl: str = "auto", q_offset=0):
    """q [B,T,H,D], k/v [B,S,KV,D] -> [B,T,H,D]. H must be a multiple of KV."""
    impl = resolve_impl(impl)
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r} (choose from {sorted(_IMPLS)})")
    out = _IMPLS[impl](q, k, v, q_segment_ids, kv_segment_ids, q_offset)
    return constrain(out, ("batch", "length", "act_heads", None))
