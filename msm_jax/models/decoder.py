"""One Flax NNX decoder for Llama 3.x, Qwen2.5 and Qwen3.

Parameter names follow Hugging Face one to one (`layers.self_attn.q_proj.kernel` is
`model.layers.N.self_attn.q_proj.weight`, transposed), so `msm_jax.hf` is a name table.
Layers are always stored stacked along a leading `layers` axis: one checkpoint layout
whether the forward pass scans (`scan_layers`, compile time independent of depth) or
unrolls. Every parameter carries its logical axis names in the `axes` metadata.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from msm_jax.models.attention import attention, cached_attention
from msm_jax.models.config import ModelConfig
from msm_jax.models.rope import apply_rope, inverse_frequencies
from msm_jax.sharding import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

REMAT_POLICIES = {  # "none": no jax.checkpoint at all
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "projections": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        jax.checkpoint_policies.save_only_these_names("attention_out", "attention_lse")),
}

# {"k": [L,B,KV,S,D], "v": [L,B,KV,S,D], "segment_ids": [B,S], "index": int32[]}; a fresh cache's
# index is the Python int 0, so the prefill knows at trace time that no earlier keys exist.
KVCache = dict


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias). `kernel` is [in, out], i.e. the HF weight transposed."""

    def __init__(self, in_dim: int, out_dim: int, axes: tuple[str, str], *, bias: bool,
                 cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = DTYPES[cfg.param_dtype]
        self.kernel = nnx.Param(_normal(rngs, (in_dim, out_dim), cfg.init_std, dtype), axes=axes)
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype), axes=(axes[1],)) if bias else None
        self.lora = None  # a LoRA adapter module (msm_jax.models.lora), set when LoRA is applied

    def __call__(self, x: jax.Array) -> jax.Array:
        # One [tokens, in] @ [in, out] dot: XLA:CPU runs a folded 2-D matmul (and its
        # gradient) markedly faster than the batched 3-D form (FACTS.md, 814 -> 590 ms/step).
        lead = x.shape[:-1]
        y = jnp.dot(x.reshape(-1, x.shape[-1]), self.kernel[...].astype(x.dtype)).reshape(*lead, -1)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        if self.lora is not None:
            y = y + self.lora(x)
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, cfg: ModelConfig, axis_name: str = "norm"):
        self.scale = nnx.Param(jnp.ones((dim,), DTYPES[cfg.param_dtype]), axes=(axis_name,))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, hd = cfg.hidden_size, cfg.resolved_head_dim
        self.cfg = cfg
        self.q_proj = Linear(d, cfg.num_heads * hd, ("embed", "heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.k_proj = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.v_proj = Linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, cfg=cfg, rngs=rngs)
        self.o_proj = Linear(cfg.num_heads * hd, d, ("heads", "embed"), bias=False, cfg=cfg, rngs=rngs)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg, "head_dim")
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg, "head_dim")
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x, positions, segment_ids, kv_cache=None, cache_segment_ids=None, cache_index=None):
        cfg = self.cfg
        b, t, _ = x.shape
        hd = cfg.resolved_head_dim
        x = x.reshape(b * t, -1)  # one [tokens, d] view for q/k/v: the backward pass saves it once, not thrice
        q, k, v = shared_input_projections(x, (self.q_proj, self.k_proj, self.v_proj), fuse=kv_cache is not None)
        q = q.reshape(b, t, cfg.num_heads, hd)
        k = k.reshape(b, t, cfg.num_kv_heads, hd)
        v = v.reshape(b, t, cfg.num_kv_heads, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = inverse_frequencies(hd, cfg.rope_theta, cfg.rope_scaling)  # a trace-time constant
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = constrain(q, ("batch", "length", "act_heads", None))
        k = constrain(k, ("batch", "length", "act_kv_heads", None))
        if kv_cache is None:
            out = attention(q, k, v, segment_ids, segment_ids, impl=cfg.attention_impl)
            new_cache = None
        else:
            # The cache is heads-major [B, KV, S, D]: only the new tokens' k/v are transposed.
            k_all, v_all = (jax.lax.dynamic_update_slice_in_dim(c, x.transpose(0, 2, 1, 3).astype(c.dtype),
                                                                cache_index, axis=2)
                            for c, x in zip(kv_cache, (k, v)))
            if isinstance(cache_index, int) and cache_index == 0:
                # Prefill into an empty cache: the prompt attends to its own keys only (T x T,
                # in causal blocks), not to all S slots of the cache.
                out = attention(q, k, v, segment_ids, segment_ids, impl="xla")
            else:
                out = cached_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), segment_ids,
                                       cache_segment_ids, cache_index)
            new_cache = (k_all, v_all)
        return self.o_proj(out.reshape(b, t, cfg.num_heads * hd)), new_cache


def shared_input_projections(x: jax.Array, linears: Sequence[Linear], fuse: bool) -> list:
    """Several Linears applied to one input; `fuse` on the KV-cache path (prefill and decode).

    On CPU a decode step is bound by how many small ops it runs, not by FLOPs: without
    LoRA the kernels are concatenated (once per decode chunk; the loop does not change
    them) and run as one matmul, split after (decode 1.09x, identical tokens and prefill
    logits in tools/bench_sampling.py's model). Elsewhere each runs alone: concatenating
    tensor-parallel kernels would reshard them.
    """
    if not fuse or jax.default_backend() != "cpu" or any(lin.lora is not None for lin in linears):
        return [lin(x) for lin in linears]
    lead = x.shape[:-1]
    kernel = jnp.concatenate([lin.kernel[...] for lin in linears], axis=1).astype(x.dtype)
    y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel).reshape(*lead, -1)
    if linears[0].bias is not None:
        y = y + jnp.concatenate([lin.bias[...] for lin in linears]).astype(x.dtype)
    ends = list(accumulate(lin.kernel.shape[1] for lin in linears))[:-1]
    return jnp.split(y, ends, axis=-1)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.up_proj = Linear(d, f, ("embed", "mlp"), bias=False, cfg=cfg, rngs=rngs)
        self.down_proj = Linear(f, d, ("mlp", "embed"), bias=False, cfg=cfg, rngs=rngs)

    def __call__(self, x, cached: bool = False):
        # On one [tokens, d] view, so each activation is saved once for the backward pass
        # (a 3-D value and its 2-D reshape for a dot would be saved as two).
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        gate, up = shared_input_projections(x, (self.gate_proj, self.up_proj), fuse=cached)
        h = jax.nn.silu(gate) * up
        h = constrain(h, ("batch", "act_mlp"))
        return self.down_proj(h).reshape(*lead, -1)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, segment_ids, kv_cache=None, cache_segment_ids=None, cache_index=None):
        attn_out, new_cache = self.self_attn(self.input_layernorm(x), positions, segment_ids,
                                             kv_cache, cache_segment_ids, cache_index)
        h = x + attn_out
        out = h + self.mlp(self.post_attention_layernorm(h), cached=kv_cache is not None)
        return constrain(out, ("batch", "length", "act_embed")), new_cache


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """A Block whose every parameter has a leading `layers` axis of size num_layers."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Block(cfg, nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), cfg.num_layers)
    state = jax.vmap(lambda key: nnx.state(Block(cfg, nnx.Rngs(params=key))))(keys)
    blocks = nnx.merge(graphdef, state)
    for _, var in nnx.iter_graph(blocks):
        if isinstance(var, nnx.Param):
            var.set_metadata(axes=("layers",) + tuple(var.get_metadata()["axes"]))
    return blocks


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        vp, d = cfg.padded_vocab_size, cfg.hidden_size
        self.embed_tokens = nnx.Param(_normal(rngs, (vp, d), cfg.init_std, DTYPES[cfg.param_dtype]),
                                      axes=("vocab", "embed"))
        self.layers = stacked_blocks(cfg, rngs)
        self.norm = RMSNorm(d, cfg.rms_norm_eps, cfg)
        self.lm_head = None if cfg.tie_embeddings else Linear(d, vp, ("embed", "vocab"), bias=False, cfg=cfg, rngs=rngs)

    # -- pieces -------------------------------------------------------------------------

    def embed(self, tokens: jax.Array) -> jax.Array:
        # Gathering from a replicated table avoids XLA's full rematerialisation
        # of a vocab-sharded table (see FACTS.md).
        table = constrain(self.embed_tokens[...], (None, None))
        x = jnp.take(table, tokens, axis=0).astype(DTYPES[self.cfg.compute_dtype])
        return constrain(x, ("batch", "length", "act_embed"))

    def split_layers(self) -> list:
        """Per-layer parameter states of the stacked layers, for `layers=`.

        One split per parameter: its gradient is one concatenation, where a slice per layer
        would give each layer's gradient as a zero-padded copy of the whole stack.
        """
        _, layer_state = nnx.split(self.layers)
        return _unstack(layer_state, self.cfg.num_layers)

    def hidden_states(self, tokens, positions=None, segment_ids=None, cache: Optional[KVCache] = None,
                      layers: Optional[list] = None):
        """Final-norm hidden states [B, T, d] (and the updated cache when given one).

        With `scan_layers` the layers run in a `lax.scan` (compile time independent of depth).
        Otherwise they run unrolled on per-layer arrays (`split_layers`, or `layers` when the
        caller split them, e.g. once outside a decode loop, which then passes the cache's k
        and v as per-layer lists too and gets lists back).
        """
        cfg = self.cfg
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.embed(tokens)
        graphdef, layer_state = nnx.split(self.layers)
        cache_index = None if cache is None else cache["index"]
        cache_segments = None
        if cache is not None:
            cache_segments = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids, cache_index, axis=1)

        def body(h, xs):
            params, kv = xs
            block = nnx.merge(graphdef, params)
            h, new_kv = block(h, positions, segment_ids, kv, cache_segments, cache_index)
            return h, new_kv

        if cfg.remat_policy != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if layers is None and cfg.scan_layers:
            kv_xs = None if cache is None else (cache["k"], cache["v"])
            x, new_kv = jax.lax.scan(body, x, (layer_state, kv_xs))
        else:
            stacked_cache = cache is not None and layers is None
            if layers is None:
                layers = self.split_layers()
            ks, vs = [None] * len(layers), [None] * len(layers)
            if cache is not None:
                ks, vs = (_unstack(c, len(layers)) if stacked_cache else list(c) for c in (cache["k"], cache["v"]))
            for i, params in enumerate(layers):
                x, kv_i = body(x, (params, None if cache is None else (ks[i], vs[i])))
                if cache is not None:
                    ks[i], vs[i] = kv_i
            new_kv = (jnp.stack(ks), jnp.stack(vs)) if stacked_cache else (ks, vs)
        x = self.norm(x)
        if cache is None:
            return x, None
        new_cache = {"k": new_kv[0], "v": new_kv[1], "segment_ids": cache_segments,
                     "index": jnp.asarray(cache_index + tokens.shape[1], jnp.int32)}
        return x, new_cache

    def output_kernel(self) -> jax.Array:
        """[d, padded_vocab] projection to logits (the embedding, transposed, when tied)."""
        return self.embed_tokens[...].T if self.lm_head is None else self.lm_head.kernel[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits over the padded vocabulary; padding columns are -1e9."""
        w = self.output_kernel().astype(hidden.dtype)
        logits = jnp.einsum("btd,dv->btv", hidden, w, preferred_element_type=jnp.float32)
        logits = constrain(logits, ("batch", "length", "act_vocab"))
        return mask_padded_vocab(logits, self.cfg.vocab_size)

    def __call__(self, tokens, positions=None, segment_ids=None, cache: Optional[KVCache] = None,
                 layers: Optional[list] = None):
        hidden, new_cache = self.hidden_states(tokens, positions, segment_ids, cache, layers)
        logits = self.logits(hidden)
        return logits if cache is None else (logits, new_cache)


def _unstack(tree, n: int) -> list:
    """A pytree of arrays with a leading axis of size n -> n pytrees, one split per array."""
    leaves, treedef = jax.tree.flatten(tree)
    parts = [jnp.split(leaf, n) for leaf in leaves]
    return [treedef.unflatten([p[i][0] for p in parts]) for i in range(n)]


def mask_padded_vocab(logits: jax.Array, vocab_size: int, offset: int = 0) -> jax.Array:
    if offset + logits.shape[-1] <= vocab_size:
        return logits
    ids = offset + jnp.arange(logits.shape[-1])
    return jnp.where(ids < vocab_size, logits, jnp.float32(-1e9))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty KV cache (all slots segment 0 = invisible)."""
    dtype = dtype or DTYPES[cfg.compute_dtype]
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.resolved_head_dim)  # heads-major
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, max_len), jnp.int32), "index": 0}
