"""The JAX sampler: KV-cache generation equals step-by-step full forwards and transformers'
greedy output on the exported model, sampling knobs do what they say, scoring equals a
full forward's log-softmax, and a sharded mesh gives the same tokens as one device."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msm_jax.config import from_dict, load_config
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.sampling import Sampler, SamplingParams, sample_logits

PROMPTS = [[5, 9, 31, 7, 2, 88], [40, 41], [100, 3, 3, 3, 17, 250, 11, 12, 13, 14, 15]]
# Every generate call below uses batch 4 and at most 16 new tokens (chunks of 8), so only a
# few shapes of the prefill and decode functions compile for the whole module.
BATCH = 4


def tiny_config(name="tiny-llama", **overrides) -> ModelConfig:
    base = load_config(ModelConfig, f"configs/models/{name}.yaml")
    # a wider init makes logits peaked, so greedy choices are not near-ties between implementations
    return from_dict(ModelConfig, {**_asdict(base), "init_std": 0.25, **overrides})


def _asdict(cfg):
    from msm_jax.config import to_dict
    return to_dict(cfg)


@pytest.fixture(scope="module")
def model():
    return Decoder(tiny_config(), nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model, chunk_size=8)


@pytest.fixture(scope="module")
def full_forward(model):
    """Uncached forward of one right-padded row of 32 slots (jitted once)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens, segment_ids):
        return nnx.merge(graphdef, state)(tokens, None, segment_ids)

    def logits(seq):
        tokens = np.zeros((1, 32), np.int32)
        tokens[0, :len(seq)] = seq
        segs = (np.arange(32) < len(seq)).astype(np.int32)[None]
        return run(state, tokens, segs)[0, :len(seq)]
    return logits


@pytest.fixture(scope="module")
def reference_greedy(full_forward):
    def greedy(prompt, steps):
        seq, out = list(prompt), []
        for _ in range(steps):
            nxt = int(jnp.argmax(full_forward(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out
    return greedy


def test_cached_greedy_equals_full_forward_argmax_for_ragged_batch(reference_greedy, sampler):
    gens = sampler.generate(PROMPTS, SamplingParams(max_tokens=13, temperature=0), batch_size=BATCH)
    for prompt, gen in zip(PROMPTS, gens):
        assert gen.tokens == reference_greedy(prompt, 13)
        assert gen.finish_reason == "length"


def test_batch_composition_does_not_change_greedy_output(sampler):
    together = sampler.generate(PROMPTS, SamplingParams(max_tokens=9, temperature=0), batch_size=BATCH)
    alone = [sampler.generate([p], SamplingParams(max_tokens=9, temperature=0), batch_size=BATCH)[0] for p in PROMPTS]
    assert [g.tokens for g in together] == [g.tokens for g in alone]


def test_eos_stops_a_row_and_is_not_returned(reference_greedy, sampler):
    ref = reference_greedy(PROMPTS[0], 10)
    eos = ref[4]
    gen = sampler.generate([PROMPTS[0]], SamplingParams(max_tokens=10, temperature=0), eos_ids=[eos],
                           batch_size=BATCH)[0]
    assert gen.tokens == ref[:ref.index(eos)] and gen.finish_reason == "eos"


def test_stop_string_cuts_text_before_it(reference_greedy, sampler):
    ref = reference_greedy(PROMPTS[1], 12)
    detok = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    stop = f"t{ref[3]}"
    gen = sampler.generate([PROMPTS[1]], SamplingParams(max_tokens=12, temperature=0, stop=(stop,)),
                           detokenize=detok, batch_size=BATCH)[0]
    assert gen.finish_reason == "stop"
    assert gen.text == detok(ref)[:detok(ref).find(stop)]


def test_sampling_is_reproducible_per_seed_and_varies_across_seeds(sampler):
    params = SamplingParams(max_tokens=16, temperature=1.5)
    a = sampler.generate(PROMPTS, params, batch_size=BATCH)
    b = sampler.generate(PROMPTS, params, batch_size=BATCH)
    c = sampler.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=1.5, seed=1), batch_size=BATCH)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000, jnp.float32))
    key = jax.random.key(0)
    draw = lambda k, p: np.asarray(sample_logits(logits, key, jnp.float32(1.0), jnp.int32(k), jnp.float32(p)))  # noqa
    assert set(draw(2, 1.0)) == {0, 1}
    assert set(draw(0, 0.7)) == {0, 1}            # 0.5 + 0.3 reaches 0.7
    assert set(draw(0, 0.1)) == {0}               # the top token always survives
    assert set(draw(0, 1.0)) == {0, 1, 2, 3}
    freq = np.bincount(draw(0, 1.0), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_one_equals_greedy(sampler):
    greedy = sampler.generate(PROMPTS, SamplingParams(max_tokens=9, temperature=0), batch_size=BATCH)
    top1 = sampler.generate(PROMPTS, SamplingParams(max_tokens=9, temperature=0.8, top_k=1), batch_size=BATCH)
    assert [g.tokens for g in greedy] == [g.tokens for g in top1]


def test_scores_equal_full_forward_log_softmax(full_forward, sampler):
    prompts, conts = [[1, 2, 3], [9, 8, 7, 6, 5]], [[4, 5], [77]]
    scores = sampler.score(prompts, conts, batch_size=BATCH)
    for p, c, s in zip(prompts, conts, scores):
        logp = jax.nn.log_softmax(full_forward(p + c), axis=-1)
        expected = [float(logp[len(p) - 1 + j, tok]) for j, tok in enumerate(c)]
        np.testing.assert_allclose(s, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model):
    """The module's model saved as an Orbax checkpoint and exported to a HF directory."""
    from msm_jax import checkpoint
    from msm_jax.hf.export_hf import orbax_to_hf
    tmp = tmp_path_factory.mktemp("export")
    checkpoint.save_params(tmp / "ckpt", checkpoint.params_of(model), checkpoint.make_meta(model.cfg))
    orbax_to_hf(tmp / "ckpt", tmp / "hf")
    return tmp


def test_greedy_equals_transformers_greedy_on_exported_model(sampler, exported):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported / "hf", dtype=torch.float32).eval()
    ours = sampler.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0), batch_size=BATCH)
    for prompt, gen in zip(PROMPTS, ours):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              do_sample=False, max_new_tokens=16, eos_token_id=None, pad_token_id=0)
        assert gen.tokens == out[0, len(prompt):].tolist()


def test_generation_sharded_over_a_mesh_equals_one_device(sampler, exported):
    script = textwrap.dedent(f"""
        import json
        from msm_jax.checkpoint import load_model
        from msm_jax.sampling import Sampler, SamplingParams
        from msm_jax.sharding import MeshConfig, make_mesh
        mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=2))
        model, _ = load_model({str(exported / "ckpt")!r}, mesh=mesh)
        params = SamplingParams(max_tokens=9, temperature=0)
        gens = Sampler(model, mesh=mesh, chunk_size=8).generate({PROMPTS!r}, params, batch_size=4)
        scores = Sampler(model, mesh=mesh).score([[1, 2, 3]], [[4, 5]], batch_size=4)
        print(json.dumps({{"tokens": [g.tokens for g in gens], "score": scores[0].tolist()}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads(proc.stdout.strip().splitlines()[-1])
    single = sampler.generate(PROMPTS, SamplingParams(max_tokens=9, temperature=0), batch_size=BATCH)
    assert sharded["tokens"] == [g.tokens for g in single]
    np.testing.assert_allclose(sharded["score"], sampler.score([[1, 2, 3]], [[4, 5]], batch_size=BATCH)[0],
                               rtol=1e-4, atol=1e-4)


def test_bad_sampling_params_are_rejected_by_validate():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0).validate()
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0).validate()


def test_the_cache_grows_by_doubling_the_decoded_part_up_to_the_whole_generation():
    from msm_jax.sampling import _cache_len

    assert [_cache_len(100, 8, c, 64) for c in range(1, 9)] == [108, 116, 132, 132, 164, 164, 164, 164]
    assert _cache_len(100, 8, 5, 40) == 140  # never past the generation's own length
