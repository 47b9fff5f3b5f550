"""Local-or-gs:// path helpers of the experiment runner."""

import sys

import pytest

from msm_jax.experiment import paths


def test_join_keeps_the_scheme_and_single_slashes():
    assert paths.join("gs://bucket/runs/", "/shards", "aft-1/") == "gs://bucket/runs/shards/aft-1"
    assert paths.join("runs", "x") == "runs/x"


def test_content_hash_of_a_folder_changes_with_a_file_name_or_content(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    first = paths.content_hash(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    second = paths.content_hash(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, paths.content_hash(tmp_path)}) == 3
    assert paths.content_hash("gs://bucket/x") == paths.content_hash("gs://bucket/x")


def test_write_text_is_atomic_and_creates_parents(tmp_path):
    target = tmp_path / "deep" / "stage.json"
    paths.write_text(target, "{}")
    assert target.read_text() == "{}" and not (target.parent / "stage.json.tmp").exists()


def test_gs_path_without_a_storage_backend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as on a machine without it
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    with pytest.raises(paths.RemoteUnavailable, match="pip install gcsfs"):
        paths.exists("gs://some-bucket/runs/stage.json")


def test_unreachable_or_misnamed_bucket_fails_at_once_with_one_line(monkeypatch):
    with pytest.raises(paths.RemoteUnavailable, match="'YOUR_BUCKET' is not a Cloud Storage bucket name"):
        paths.exists("gs://YOUR_BUCKET/runs/stage.json")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(paths, "_GCS_HOST", "storage.invalid")
    with pytest.raises(paths.RemoteUnavailable, match="storage.invalid does not resolve"):
        paths.read_text("gs://some-bucket/runs/stage.json")
