"""Hugging Face import/export: logit parity with transformers, bit-exact round trips,
streaming shards, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file

from hf_fixtures import FAMILIES, make_hf_model
from msm_jax import checkpoint
from msm_jax.cli import main as msm
from msm_jax.errors import UserError
from msm_jax.hf.export_hf import orbax_to_hf
from msm_jax.hf.import_hf import hf_to_orbax, load_hf_model
from msm_jax.hf.safetensors_io import SafetensorsReader
from msm_jax.hf.verify import max_logit_difference

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=FAMILIES)
def hf_model(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"hf-{request.param}")
    make_hf_model(request.param, out)
    return request.param, out


def all_tensors(hf_dir):
    reader = SafetensorsReader(hf_dir)
    return {name: np.array(reader.get(name)) for name in reader.names()}


def test_imported_model_matches_transformers_logits_with_padding(hf_model):
    _, hf_dir = hf_model
    diff, scale = max_logit_difference(load_hf_model(hf_dir), hf_dir)
    assert scale > 0.1  # the comparison is not between two near-zero outputs
    assert diff < 1e-4


def test_import_then_export_reproduces_every_tensor_bit_for_bit(hf_model, tmp_path):
    _, hf_dir = hf_model
    hf_to_orbax(hf_dir, tmp_path / "ckpt")
    meta = checkpoint.read_meta(tmp_path / "ckpt")
    assert meta["layout"] == "stacked" and meta["model"]["param_dtype"] == "float32"
    orbax_to_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_bytes=40_000)  # forces several shards
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    original, exported = load_file(hf_dir / "model.safetensors"), all_tensors(tmp_path / "out")
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def _train_a_few_steps(model, steps=3):
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 16)))

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            logits = m(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(steps)]
    assert losses[-1] < losses[0]
    return model


def test_export_of_a_trained_model_loads_in_transformers_with_equal_logits(hf_model, tmp_path):
    import transformers

    _, hf_dir = hf_model
    model = _train_a_few_steps(load_hf_model(hf_dir))
    checkpoint.save_params(tmp_path / "ckpt", checkpoint.params_of(model), checkpoint.make_meta(model.cfg), step=3)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    out = orbax_to_hf(tmp_path / "ckpt", tmp_path / "out", tokenizer_dir=tmp_path / "tok")
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    transformers.AutoConfig.from_pretrained(out)
    diff, _ = max_logit_difference(model, out)
    assert diff < 1e-4


def test_bfloat16_export_and_import_keep_dtype(tmp_path):
    hf_dir = tmp_path / "hf"
    make_hf_model("qwen3", hf_dir, dtype="bfloat16")
    cfg = hf_to_orbax(hf_dir, tmp_path / "ckpt")
    assert cfg.param_dtype == "bfloat16" and cfg.compute_dtype == "bfloat16"
    orbax_to_hf(tmp_path / "ckpt", tmp_path / "out")
    original, exported = all_tensors(hf_dir), all_tensors(tmp_path / "out")
    for name, value in original.items():
        assert exported[name].dtype == value.dtype
        np.testing.assert_array_equal(exported[name].view(np.uint16), value.view(np.uint16), err_msg=name)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_cli_round_trip_with_verify_prints_parity(tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    make_hf_model("llama", hf_dir, tie=True)
    assert msm(["convert", "hf-to-orbax", str(hf_dir), str(tmp_path / "ckpt"), "--verify"]) == 0
    assert msm(["convert", "orbax-to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("verify: max |logit difference|") == 2
    assert "lm_head.weight" not in all_tensors(tmp_path / "out")  # tied embeddings stay tied


@pytest.fixture()
def broken_dir(tmp_path):
    hf_dir = tmp_path / "hf"
    make_hf_model("qwen2", hf_dir)
    return hf_dir


def test_directory_without_config_json_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no config.json"):
        hf_to_orbax(tmp_path / "empty", tmp_path / "ckpt")


def test_unsupported_model_type_is_named(broken_dir, tmp_path):
    cfg = json.loads((broken_dir / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (broken_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config.json: unsupported model_type 'gpt2'"):
        hf_to_orbax(broken_dir, tmp_path / "ckpt")


def test_missing_and_misshaped_tensors_are_named(broken_dir, tmp_path):
    from safetensors.numpy import save_file

    tensors = load_file(broken_dir / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][:-1]
    save_file(tensors, broken_dir / "model.safetensors")
    with pytest.raises(UserError, match=r"model.layers.1.mlp.up_proj.weight has shape \[111, 64\], config.json implies \[112, 64\]"):
        hf_to_orbax(broken_dir, tmp_path / "ckpt")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken_dir / "model.safetensors")
    with pytest.raises(UserError, match=r"tensor model.layers.1.mlp.up_proj.weight is missing"):
        hf_to_orbax(broken_dir, tmp_path / "ckpt")


def test_truncated_safetensors_file_is_named(broken_dir, tmp_path):
    path = broken_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match=r"model.safetensors: truncated safetensors file"):
        hf_to_orbax(broken_dir, tmp_path / "ckpt")


def test_export_of_missing_or_corrupt_checkpoint_is_named(tmp_path):
    with pytest.raises(UserError, match=r"nothing: checkpoint directory does not exist"):
        orbax_to_hf(tmp_path / "nothing", tmp_path / "out")
    hf_dir = tmp_path / "hf"
    make_hf_model("qwen3", hf_dir)
    hf_to_orbax(hf_dir, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "0" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(UserError, match=r"metadata: corrupt checkpoint metadata"):
        orbax_to_hf(tmp_path / "ckpt", tmp_path / "out")
    shutil.rmtree(tmp_path / "ckpt" / "0" / "meta")
    with pytest.raises(UserError, match=r"no complete checkpoint step"):
        orbax_to_hf(tmp_path / "ckpt", tmp_path / "out")
