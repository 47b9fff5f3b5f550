"""The writer rules every command follows (msm_jax/outputs.py)."""

import json

import pytest

from msm_jax.errors import UserError
from msm_jax.outputs import MARKER, atomic_open, atomic_write_text, claim_output_dir


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_claim_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and was not written by msm"):
        claim_output_dir(tmp_path, "hf-export")
    out = claim_output_dir(tmp_path, "hf-export", overwrite=True)
    out.wrote("model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    out.finish()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_claim_refuses_another_commands_output(tmp_path):
    claim_output_dir(tmp_path, "shards").finish()
    with pytest.raises(UserError, match="holds the output of `shards`"):
        claim_output_dir(tmp_path, "hf-export", overwrite=True)


def test_rerun_removes_only_its_own_stale_files(tmp_path):
    first = claim_output_dir(tmp_path, "hf-export")
    for name in ("model.safetensors", "config.json"):
        (tmp_path / name).write_text(name)
        first.wrote(name)
    first.finish()
    (tmp_path / "README.md").write_text("user")
    second = claim_output_dir(tmp_path, "hf-export")
    for name in ("model-00001-of-00002.safetensors", "config.json"):
        (tmp_path / name).write_text(name)
        second.wrote(name)
    second.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MARKER, "README.md", "config.json", "model-00001-of-00002.safetensors"])
    assert json.loads((tmp_path / MARKER).read_text())["kind"] == "hf-export"


def test_atomic_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "{}")
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    import os
    old = os.umask(0)
    os.umask(old)
    return old
