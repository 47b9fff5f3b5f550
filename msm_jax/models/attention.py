"""Attention with segment ids, behind one function that picks the kernel.

`xla` is the reference every other path is tested against. Packed rows hold several
documents; a query attends only to keys of the same segment, at or before its slot.
Segment id 0 marks padding (and empty KV-cache slots).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

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


def _grouped_queries(q, kv_heads: int):
    """q [B,T,H,D] -> pre-scaled [B, KV, group*T, D]."""
    b, t, h, d = q.shape
    q = q * jnp.asarray(1.0 / jnp.sqrt(jnp.float32(d)), q.dtype)
    return q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, -1, d)


def _ungrouped(out, t: int):
    """[B, KV, group*T, D] -> [B, T, H, D]."""
    b, kv_heads, rows, d = out.shape
    return out.reshape(b, kv_heads, rows // t, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, -1, d)


def _masked_scores(q, k, q_segment_ids, kv_segment_ids, q_offset):
    """fp32 scores [B, KV, group*T, S], masked. The mask is broadcast over the query group
    from the segment ids (never materialised per group), so XLA fuses it into the select."""
    b, kv_heads, rows, _ = q.shape
    t, s = q_segment_ids.shape[1], k.shape[2]
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_offset)[:, None, None]  # [B, 1, 1, T, S]
    # A finite fill keeps fully masked (padding) rows NaN-free; their outputs are unused.
    scores = jnp.where(mask, scores.reshape(b, kv_heads, rows // t, t, s), jnp.finfo(jnp.float32).min)
    return scores.reshape(b, kv_heads, rows, s)


@jax.custom_vjp
def _attention_core(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    """softmax(q k^T, masked) v over [B, KV, group*T, D], probabilities recomputed in backward.

    The backward pass keeps only q, k, v, the output and the row log-sum-exp, never the
    [.., group*T, S] probabilities: writing and re-reading those per layer cost more on CPU
    than the one extra q k^T matmul (the flash-attention backward, unblocked).
    """
    return _attention_forward(q, k, v, q_segment_ids, kv_segment_ids, q_offset)[0]


def _attention_forward(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    scores = _masked_scores(q, k, q_segment_ids, kv_segment_ids, q_offset)
    row_max = jax.lax.stop_gradient(scores.max(-1, keepdims=True))
    unnormalized = jnp.exp(scores - row_max)
    row_sum = unnormalized.sum(-1, keepdims=True)
    # Normalised after the second dot: a pass over [.., D] instead of over [.., S].
    out = jnp.einsum("bkqs,bksd->bkqd", unnormalized.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = (out / row_sum).astype(v.dtype)
    # Named so that a remat policy can keep them and skip re-running this forward in backward.
    out = checkpoint_name(out, "attention_out")
    lse = checkpoint_name(row_max + jnp.log(row_sum), "attention_lse")
    return out, (q, k, v, q_segment_ids, kv_segment_ids, q_offset, out, lse)


def _attention_backward(residuals, d_out):
    q, k, v, q_segment_ids, kv_segment_ids, q_offset, out, lse = residuals
    probs = jnp.exp(_masked_scores(q, k, q_segment_ids, kv_segment_ids, q_offset) - lse)
    d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(v.dtype), d_out)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out, v, preferred_element_type=jnp.float32)
    row_dot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = (probs * (d_probs - row_dot)).astype(q.dtype)
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, k)
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, q)
    return d_q, d_k, d_v, None, None, None


_attention_core.defvjp(_attention_forward, _attention_backward)


def causal_blocks(t: int) -> int:
    """Query blocks for a whole sequence of length t: 4, or blocks of 64 queries once that
    is more, up to 16 (dividing t). Measured on CPU: at T=256 training, 2/4/8 blocks ran
    972/927/944 ms a step; at T=512, 4 and 8 the same; an 8 x 1024 prefill 2.30 / 1.94 /
    1.70 / 1.77 s with 4 / 8 / 16 / 32 blocks."""
    blocks = min(16, max(4, t // 64))
    while t % blocks:
        blocks -= 1
    return blocks


def xla_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=0):
    """Reference path: GQA as batched matmuls over [B, KV, group*T, D] and a masked fp32 softmax.

    Heads come first and each KV head's query group is folded into the query dimension, so
    both dots (and their gradients) are plain batched matmuls over (B, KV) and the large
    [.., T, S] score tensors are never transposed; only the small q/k/v/output are.
    Over a whole sequence (no cache) the queries run in blocks, each against the keys up
    to its last slot only: causal masking then skips a third (4 blocks) to half of the work.
    """
    t, s = q.shape[1], k.shape[1]
    whole = isinstance(q_offset, int) and q_offset == 0 and t == s
    blocks = causal_blocks(t) if whole else 1
    width = t // blocks
    outs = []
    for i in range(blocks):
        lo, hi = i * width, (i + 1) * width
        end = s if blocks == 1 else hi
        k_block, v_block = (x[:, :end].transpose(0, 2, 1, 3) for x in (k, v))  # heads-major
        outs.append(_grouped_attention(q[:, lo:hi], k_block, v_block, q_segment_ids[:, lo:hi],
                                       kv_segment_ids[:, :end], q_offset + lo))
    return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)


def _grouped_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    """q [B,T,H,D], k/v heads-major [B, KV, S, D] -> [B,T,H,D]."""
    q = _grouped_queries(q, k.shape[1])
    out = _attention_core(q, k, v, q_segment_ids, kv_segment_ids, jnp.asarray(q_offset, jnp.int32))
    return _ungrouped(out, q_segment_ids.shape[1])


def cached_attention(q, k_cache, v_cache, q_segment_ids, kv_segment_ids, q_offset):
    """q [B,T,H,D] against a KV cache held heads-major, k/v [B, KV, S, D] -> [B,T,H,D].

    The cache keeps the layout the attention matmuls read, so a decode step does not
    transpose (copy) every layer's whole cache to attend with one new token.
    """
    out = _grouped_attention(q, k_cache, v_cache, q_segment_ids, kv_segment_ids, q_offset)
    return constrain(out, ("batch", "length", "act_heads", None))


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
