"""`msm convert` follows the writer rules: a re-export replaces the earlier one (transformers
loads the new weights), foreign files are refused and never deleted, and an import never
reports success while the old weights stay in place."""

import json

import numpy as np
import pytest

from hf_fixtures import make_hf_model
from msm_jax import checkpoint
from msm_jax.cli import main as msm
from msm_jax.hf.import_hf import load_hf_params, config_from_hf_dir
from msm_jax.hf.verify import hf_logits, random_batch
from msm_jax.outputs import MARKER

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two llama models of one shape with different weights, each imported to a checkpoint."""
    root = tmp_path_factory.mktemp("writers")
    for name, seed in (("a", 0), ("b", 1)):
        make_hf_model("llama", root / f"hf_{name}", seed=seed)
        assert msm(["convert", "hf-to-orbax", str(root / f"hf_{name}"), str(root / f"ckpt_{name}")]) == 0
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_reexport_with_other_shards_removes_stale_files_so_transformers_loads_new_weights(two_models, tmp_path):
    out = tmp_path / "export"
    assert msm(["convert", "orbax-to-hf", str(two_models / "ckpt_a"), str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert msm(["convert", "orbax-to-hf", str(two_models / "ckpt_b"), str(out), "--max-shard-size", "0.00004"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert len([n for n in names if n.startswith("model-")]) > 1
    tokens, mask = random_batch(300)
    expected = hf_logits(two_models / "hf_b", tokens, mask)
    assert np.abs(hf_logits(out, tokens, mask) - expected)[mask.astype(bool)].max() < 1e-5
    assert np.abs(hf_logits(two_models / "hf_a", tokens, mask) - expected).max() > 1e-2  # a real change
    # Back to one file: the shards and the index of the sharded export go.
    assert msm(["convert", "orbax-to-hf", str(two_models / "ckpt_a"), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "config.json", "generation_config.json", "model.safetensors"])


def test_export_refuses_a_folder_with_foreign_files_and_overwrite_keeps_them(two_models, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert msm(["convert", "orbax-to-hf", str(two_models / "ckpt_a"), str(out)]) == 1
    assert "not empty and was not written by msm" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert msm(["convert", "orbax-to-hf", str(two_models / "ckpt_a"), str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "model.safetensors").is_file()


def test_export_refuses_a_foreign_weights_file_that_transformers_would_load_instead(two_models, tmp_path, capsys):
    out = tmp_path / "old-export"
    out.mkdir()
    old = (two_models / "hf_a" / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(old)  # e.g. an export made before output markers
    args = ["convert", "orbax-to-hf", str(two_models / "ckpt_b"), str(out), "--max-shard-size", "0.00004",
            "--overwrite"]
    assert msm(args) == 1
    assert "model.safetensors: a weights file not written by msm" in one_error_line(capsys)
    assert (out / "model.safetensors").read_bytes() == old
    assert not [p for p in out.iterdir() if p.name.startswith("model-")]


def param_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def restored(ckpt_dir):
    model, _ = checkpoint.load_model(ckpt_dir)
    return param_leaves(checkpoint.params_of(model))


def test_import_into_an_existing_checkpoint_refuses_then_overwrite_restores_the_new_weights(two_models, tmp_path,
                                                                                            capsys):
    ckpt = tmp_path / "ckpt"
    assert msm(["convert", "hf-to-orbax", str(two_models / "hf_a"), str(ckpt)]) == 0
    capsys.readouterr()
    assert msm(["convert", "hf-to-orbax", str(two_models / "hf_b"), str(ckpt)]) == 1
    line = one_error_line(capsys)
    assert "already holds a checkpoint (step 0); pass --overwrite" in line
    assert "imported" not in capsys.readouterr().out
    weights_b = param_leaves(load_hf_params(two_models / "hf_b", config_from_hf_dir(two_models / "hf_b")))
    weights_a = restored(two_models / "ckpt_a")
    for got, want in zip(restored(ckpt), weights_a):
        np.testing.assert_array_equal(got, want)
    assert msm(["convert", "hf-to-orbax", str(two_models / "hf_b"), str(ckpt), "--overwrite"]) == 0
    for got, want in zip(restored(ckpt), weights_b):
        np.testing.assert_array_equal(got, want)
    assert json.loads((ckpt / MARKER).read_text()) == {"kind": "hf-import", "files": ["0"]}


def test_import_overwrite_never_deletes_a_checkpoint_msm_convert_did_not_write(two_models, tmp_path, capsys):
    ckpt = tmp_path / "run"
    model, _ = checkpoint.load_model(two_models / "ckpt_a")
    checkpoint.save_params(ckpt, checkpoint.params_of(model), checkpoint.make_meta(model.cfg), step=0)
    assert msm(["convert", "hf-to-orbax", str(two_models / "hf_b"), str(ckpt), "--overwrite"]) == 1
    assert "step 0 was not written by `msm convert hf-to-orbax`" in one_error_line(capsys)
    for got, want in zip(restored(ckpt), restored(two_models / "ckpt_a")):
        np.testing.assert_array_equal(got, want)


def test_peft_export_refuses_a_foreign_folder_and_a_rerun_replaces_its_own_files(tmp_path, capsys):
    from test_lora import adapted_model, save_lora_checkpoint

    from msm_jax.config import load_config
    from msm_jax.models.config import ModelConfig

    save_lora_checkpoint(tmp_path / "ckpt", adapted_model(load_config(ModelConfig, "configs/models/tiny-qwen3.yaml")))
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "README.md").write_text("mine")
    assert msm(["convert", "lora-to-peft", str(tmp_path / "ckpt"), str(out)]) == 1
    assert "not empty and was not written by msm" in one_error_line(capsys)
    assert msm(["convert", "lora-to-peft", str(tmp_path / "ckpt"), str(out), "--overwrite"]) == 0
    first = (out / "adapter_model.safetensors").read_bytes()
    assert msm(["convert", "lora-to-peft", str(tmp_path / "ckpt"), str(out), "--dtype", "bfloat16"]) == 0
    assert len((out / "adapter_model.safetensors").read_bytes()) < len(first)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MARKER, "README.md", "adapter_config.json", "adapter_model.safetensors"])
