"""Loss, schedules, weight-decay mask and the FLOPs formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msm_jax.config import load_config
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.train.config import OptimizerConfig, ScheduleConfig
from msm_jax.train.flops import flops_per_token, matmul_params, mfu
from msm_jax.train.loss import cross_entropy_sums, next_token_targets
from msm_jax.train.optimizer import decay_mask, learning_rate

VOCAB, PADDED = 50, 64


def packed_batch():
    """Two rows: [seg1: 4 tokens | seg2: 3 tokens | pad], [seg1: 8 tokens, chat-style mask]."""
    tokens = np.array([[5, 6, 7, 8, 9, 10, 11, 0], [1, 2, 3, 4, 5, 6, 7, 8]], np.int32)
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 6, 7]], np.int32)
    mask = np.array([[0, 1, 1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 0]], np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": mask}


def reference_loss(logits, batch):
    """Plain numpy: target i predicted from logits[i-1] inside one segment, where loss_mask[i]."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(1, logits.shape[1]):
            seg = batch["segment_ids"][b]
            if seg[i] != 0 and seg[i] == seg[i - 1] and batch["loss_mask"][b, i]:
                row = logits[b, i - 1, :VOCAB].astype(np.float64)
                lse = np.log(np.exp(row - row.max()).sum()) + row.max()
                total += lse - row[batch["tokens"][b, i]]
                count += 1
    return total / count, count


@pytest.fixture(scope="module")
def hidden_and_kernel():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(2, 8, 16)), jnp.float32),
            jnp.asarray(rng.normal(size=(16, PADDED)), jnp.float32))


def test_loss_counts_only_in_segment_targets_with_loss_mask(hidden_and_kernel):
    hidden, kernel = hidden_and_kernel
    batch = packed_batch()
    sums = cross_entropy_sums(hidden, kernel, batch, VOCAB)
    logits = np.asarray(jnp.einsum("btd,dv->btv", hidden, kernel))
    expected, count = reference_loss(logits, batch)
    assert float(sums.count) == count == 8
    assert float(sums.ce) / float(sums.count) == pytest.approx(expected, rel=1e-5)


def test_vocab_chunked_loss_and_gradients_equal_the_full_vocab_ones(hidden_and_kernel):
    hidden, kernel = hidden_and_kernel
    batch = packed_batch()

    def loss(h, k, chunks):
        s = cross_entropy_sums(h, k, batch, VOCAB, vocab_chunks=chunks)
        return (s.ce + 1e-2 * s.z) / s.count

    full, grads_full = jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel, 1)
    chunked, grads_chunked = jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel, 4)
    assert float(chunked) == pytest.approx(float(full), rel=1e-5)
    for a, b in zip(grads_full, grads_chunked):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_z_loss_sums_squared_logsumexp(hidden_and_kernel):
    hidden, kernel = hidden_and_kernel
    sums = cross_entropy_sums(hidden, kernel, packed_batch(), VOCAB)
    logits = np.asarray(jnp.einsum("btd,dv->btv", hidden, kernel))[:, :-1, :VOCAB].astype(np.float64)
    lse = np.log(np.exp(logits).sum(-1))
    _, valid = next_token_targets(packed_batch())
    assert float(sums.z) == pytest.approx(float((lse ** 2 * np.asarray(valid)).sum()), rel=1e-5)


def test_schedule_warms_up_linearly_then_decays_to_the_final_ratio():
    opt = OptimizerConfig(lr=1e-3)
    cosine = learning_rate(opt, ScheduleConfig(kind="cosine", warmup_steps=4, final_lr_ratio=0.1), 20)
    assert [float(cosine(s)) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert float(cosine(4)) == pytest.approx(1e-3) and float(cosine(19)) == pytest.approx(1e-4)
    assert float(cosine(11.5)) == pytest.approx(5.5e-4, rel=1e-4)  # cosine midpoint
    linear = learning_rate(opt, ScheduleConfig(kind="linear", warmup_steps=0, final_lr_ratio=0.0), 11)
    assert [float(linear(s)) for s in (0, 5, 10)] == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-9)
    constant = learning_rate(opt, ScheduleConfig(kind="constant", warmup_steps=2), 10)
    assert [float(constant(s)) for s in (0, 1, 9)] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_weight_decay_mask_skips_norms_and_biases():
    cfg = load_config(ModelConfig, "configs/models/tiny-qwen2.yaml")
    state = nnx.state(nnx.eval_shape(lambda: Decoder(cfg, nnx.Rngs(0))), nnx.Param)
    mask = decay_mask(state)
    attn = mask["layers"]["self_attn"]
    assert attn["q_proj"]["kernel"] and not attn["q_proj"]["bias"]
    assert not mask["layers"]["input_layernorm"]["scale"] and not mask["norm"]["scale"]
    assert mask["embed_tokens"] and mask["layers"]["mlp"]["down_proj"]["kernel"]


def test_flops_per_token_is_six_times_matmul_params_plus_causal_attention():
    cfg = load_config(ModelConfig, "configs/models/tiny-llama.yaml")
    d, f, L, V = 64, 128, 2, cfg.vocab_size
    per_layer = d * 64 + 2 * d * 32 + 64 * d + 3 * d * f  # q, k, v (2 kv heads of 16), o, gate/up/down
    assert matmul_params(cfg) == L * per_layer + d * V
    assert flops_per_token(cfg, 128) == 6 * matmul_params(cfg) + 6 * L * 4 * 16 * 128
    assert mfu(cfg, 128, 1000.0, 2, None) is None
    assert mfu(cfg, 128, 1e6, 1, 1.0) == pytest.approx(flops_per_token(cfg, 128) * 1e6 / 1e12)


def test_example_train_configs_load():
    from pathlib import Path

    from msm_jax.config import load_config
    from msm_jax.train.config import RunConfig

    paths = sorted((Path(__file__).resolve().parent.parent / "configs" / "train").rglob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        cfg = load_config(RunConfig, path)
        assert cfg.train.global_batch > 0 and (cfg.model is not None or cfg.init.from_checkpoint or cfg.init.from_hf)
