"""Checkpoints are never lost or trusted blindly: a run dir written by another config is
refused before anything is touched, a folder msm did not write is left alone, only steps
that cannot be read back as written are set aside (never over an earlier `.broken`), and
flipped or truncated array bytes are caught by checksums."""

import asyncio
import gc
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import (REFERENCE_OVERRIDES, jax_cache_dir, loader_for, losses, reference_run,  # noqa: F401
                            run_config, run_worker, worker_env)

from msm_jax import checkpoint, checksums
from msm_jax.errors import UserError


def snapshot(root: Path) -> dict:
    """Every file under `root` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def run_copy(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run[0], run_dir)
    return run_dir


def restore(run_dir, *overrides):
    """What `msm train` does before its first step: resume or initialise."""
    from msm_jax.train.loop import Trainer

    cfg = run_config(run_dir, *REFERENCE_OVERRIDES, *overrides)
    return Trainer(cfg, loader=loader_for(cfg))._restore_or_init()


@pytest.mark.parametrize("overrides, difference", [
    (["model.num_layers=3"], "model.num_layers is 2 in the checkpoint but 3 in the config"),
    (["lora.rank=4", "lora.alpha=8.0"], "the checkpoint has no LoRA adapter but the config has a lora section"),
    (["optimizer.clip_norm=null"], "opt_state: "),
])
def test_rerun_with_another_config_fails_naming_the_difference_and_touches_nothing(run_copy, overrides, difference):
    before = snapshot(run_copy)
    with pytest.raises(UserError) as err:
        restore(run_copy, *overrides)
    message = str(err.value)
    assert difference in message and str(run_copy) in message and "\n" not in message
    assert snapshot(run_copy) == before  # nothing renamed, nothing written


def test_a_user_folder_named_like_a_step_is_refused_and_left_alone(run_copy):
    (run_copy / "5").mkdir()
    (run_copy / "5" / "notes.txt").write_text("mine")
    before = snapshot(run_copy)
    with pytest.raises(UserError, match="5: a folder msm did not write, named like a checkpoint step"):
        restore(run_copy)
    assert snapshot(run_copy) == before and (run_copy / "5" / "notes.txt").read_text() == "mine"


def test_setting_aside_never_replaces_an_earlier_broken_folder(run_copy):
    (run_copy / "8.broken").mkdir()
    (run_copy / "8.broken" / "evidence.txt").write_text("first")
    shutil.rmtree(run_copy / "8" / "opt_state")  # step 8 cannot be restored
    _, step = restore(run_copy)
    assert step == 6
    assert (run_copy / "8.broken" / "evidence.txt").read_text() == "first"
    assert (run_copy / "8.broken-1" / "train").is_dir() and not (run_copy / "8").exists()


def largest_data_file(item_dir: Path) -> Path:
    return max((item_dir / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)


def test_flipped_bytes_in_an_array_are_caught_by_its_checksum(run_copy, caplog):
    data = largest_data_file(run_copy / "8" / "params")
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 4] = bytes(b ^ 0xFF for b in raw[middle:middle + 4])
    data.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CorruptCheckpoint, match=r"step 8: array params\.\S+ fails its checksum"):
        checkpoint.load_model(run_copy, step=8)
    with caplog.at_level(logging.WARNING, logger="msm_jax.checkpoint"):
        state, step = restore(run_copy)
    assert step == 6  # the corrupt step is not trusted ...
    flagged = [r.getMessage() for r in caplog.records if "fails its checksum" in r.getMessage()]
    assert len(flagged) == 1 and "checkpoint step 8: array params." in flagged[0] and "\n" not in flagged[0]
    assert (run_copy / "8.broken").is_dir()  # ... and kept for inspection


def test_truncated_array_file_resumes_from_the_previous_step_without_asyncio_tracebacks(
        run_copy, jax_cache_dir, reference_run):
    for f in (run_copy / "8").rglob("*"):  # truncate the OCDBT files of every array item
        if f.is_file() and "ocdbt" in str(f.relative_to(run_copy)):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    summary, err = run_worker(jax_cache_dir, run_dir=str(run_copy), overrides=REFERENCE_OVERRIDES)
    assert "checkpoint step 8 is incomplete or corrupt" in err
    assert "Event loop is closed" not in err and "Traceback" not in err
    assert summary["steps"] == 8 and losses(run_copy) == reference_run[1]


def test_only_closed_event_loop_reports_are_silenced(monkeypatch):
    from types import SimpleNamespace

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    checkpoint._quiet_closed_loop_reports()
    closed, other = (SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=None, err_msg=None, object=None)
                     for e in (RuntimeError("Event loop is closed"), ValueError("something else")))
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert reported == [other]


def orphan_a_failed_task(defined_in: str) -> None:
    """What Orbax does when one read of a restore fails: the loop closes with another
    read's task failed and never awaited; the collector then has asyncio report it."""
    namespace = {}
    exec(compile("async def read():\n    raise ValueError('DATA_LOSS')\n", defined_in, "exec"), namespace)
    loop = asyncio.new_event_loop()
    task = loop.create_task(namespace["read"]())
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    del task
    gc.collect()


def test_only_orbax_orphaned_task_reports_are_silenced(caplog):
    checkpoint._quiet_closed_loop_reports()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        orphan_a_failed_task("/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
        assert not caplog.records
        orphan_a_failed_task("/work/mine/reader.py")
    [report] = caplog.records
    assert report.getMessage().startswith("Task exception was never retrieved") and "reader.py" in report.getMessage()


CHECKSUM_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from msm_jax import checksums
a = np.random.default_rng(0).standard_normal((4, 64, 32)).astype(np.float32)
b = jnp.asarray(np.random.default_rng(1).standard_normal((64, 48)), jnp.bfloat16)
one = checksums.tree_checksums({"a": jnp.asarray(a), "b": b})
mesh = jax.make_mesh((2, 4), ("x", "y"))
spread = checksums.tree_checksums({"a": jax.device_put(a, NamedSharding(mesh, P("x", "y"))),
                                   "b": jax.device_put(b, NamedSharding(mesh, P(None, "x")))})
print(one == spread, one["a"] == checksums.host_checksum(a), one["b"] == checksums.host_checksum(np.asarray(b)))
"""


def test_checksums_are_the_same_on_any_mesh_and_on_the_host(jax_cache_dir):
    proc = subprocess.run([sys.executable, "-c", CHECKSUM_SCRIPT], env=worker_env(jax_cache_dir, devices=8),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "True", "True"]


def test_a_checksum_adds_up_over_slices_and_changes_with_any_one_element():
    a = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    whole = checksums.host_checksum(a)
    assert checksums.combine(*(checksums.partial_checksum(a[i], i * a[i].size) for i in range(3))) == whole
    for index in (0, 50, a.size - 1):
        changed = a.copy().reshape(-1)
        changed.view(np.uint32)[index] ^= 1 << (index % 32)  # one bit of one element
        assert checksums.host_checksum(changed.reshape(a.shape)) != whole
    swapped = a.copy().reshape(-1)
    swapped[[3, 4]] = swapped[[4, 3]]
    assert checksums.host_checksum(swapped.reshape(a.shape)) != whole  # positions count
