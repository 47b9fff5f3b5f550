"""Next-token cross-entropy over packed rows, in fp32, optionally chunked over the vocabulary.

Token i is a target, predicted from position i-1, when it continues the same non-padding
segment and its loss_mask is 1 (CONTRACTS.md). The functions return *sums* and the target
count, so micro-batches accumulate exactly and the caller normalises once per step by
the number of loss-bearing tokens in the whole global batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from msm_jax.models.decoder import mask_padded_vocab
from msm_jax.sharding import constrain


class LossSums(NamedTuple):
    ce: jax.Array  # sum of -log p(target)
    z: jax.Array  # sum of logsumexp^2 (z-loss)
    count: jax.Array  # number of targets

    def __add__(self, other):
        return LossSums(self.ce + other.ce, self.z + other.z, self.count + other.count)


def next_token_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """(targets [B, T-1], valid [B, T-1]) for logits at positions 0..T-2."""
    seg = batch["segment_ids"]
    targets = batch["tokens"][:, 1:]
    valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0) & (batch["loss_mask"][:, 1:] == 1)
    return targets, valid


def _full_vocab(hidden, kernel, targets, vocab_size):
    # One [tokens, d] @ [d, vocab] dot: its gradients are plain 2-D matmuls, where the 3-D
    # form made XLA:CPU transpose the [B, T, vocab] logit gradient for the kernel's.
    b, t, d = hidden.shape
    logits = jnp.dot(hidden.reshape(b * t, d), kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)
    logits = mask_padded_vocab(constrain(logits, ("batch", "act_vocab")), vocab_size)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # A compare-and-sum, not a gather: its gradient is elementwise instead of a scatter
    # (slow on CPU), and it works unchanged on vocab-sharded logits.
    ids = jnp.arange(logits.shape[-1])
    target_logit = jnp.sum(jnp.where(ids == targets.reshape(-1, 1), logits, 0.0), axis=-1)
    return lse.reshape(b, t), target_logit.reshape(b, t)


def _chunked_vocab(hidden, kernel, targets, vocab_size, chunks):
    """Online logsumexp over `chunks` strided column groups (column c*chunks + k is in
    chunk k), so a vocab-sharded kernel is scanned without gathering it."""
    d, vp = kernel.shape
    if vp % chunks:
        raise ValueError(f"vocab_chunks={chunks} does not divide the padded vocabulary {vp}")
    width = vp // chunks
    kernel_chunks = kernel.reshape(d, width, chunks).transpose(2, 0, 1)  # [chunks, d, width]
    b, t, _ = hidden.shape

    @jax.checkpoint
    def body(carry, xs):
        running_max, running_sum, target_logit = carry
        k, w = xs
        logits = jnp.einsum("btd,dv->btv", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
        ids = jnp.arange(width) * chunks + k
        logits = jnp.where(ids < vocab_size, logits, jnp.float32(-1e9))
        new_max = jnp.maximum(running_max, logits.max(-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.exp(logits - new_max[..., None]).sum(-1)
        target_logit = target_logit + jnp.where(ids == targets[..., None], logits, 0.0).sum(-1)
        return (new_max, running_sum, target_logit), None

    init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32), jnp.zeros((b, t), jnp.float32))
    (m, s, target_logit), _ = jax.lax.scan(body, init, (jnp.arange(chunks), kernel_chunks))
    return m + jnp.log(s), target_logit


def cross_entropy_sums(hidden: jax.Array, kernel: jax.Array, batch: dict, vocab_size: int,
                       vocab_chunks: int = 1) -> LossSums:
    """Loss sums from final hidden states [B, T, d] and the output kernel [d, padded_vocab]."""
    targets, valid = next_token_targets(batch)
    hidden = hidden[:, :-1]
    if vocab_chunks == 1:
        lse, target_logit = _full_vocab(hidden, kernel, targets, vocab_size)
    else:
        lse, target_logit = _chunked_vocab(hidden, kernel, targets, vocab_size, vocab_chunks)
    w = valid.astype(jnp.float32)
    return LossSums(ce=jnp.sum((lse - target_logit) * w), z=jnp.sum(jnp.square(lse) * w), count=jnp.sum(w))


def model_loss_sums(model, batch: dict, vocab_chunks: int = 1) -> LossSums:
    hidden, _ = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"])
    return cross_entropy_sums(hidden, model.output_kernel(), batch, model.cfg.vocab_size, vocab_chunks)
