"""The same run gives the same losses on 1 device and on 8 (fake CPU) devices in any mesh
layout, and a checkpoint written on 8 devices continues on 4."""

import shutil

import pytest
from train_fixtures import (REFERENCE_OVERRIDES, STEPS, jax_cache_dir, losses, reference_run, run_worker,  # noqa: F401
                            sft_overrides, sft_reference_run)

from msm_jax.train.metrics import truncate_metrics

pytestmark = pytest.mark.slow

LAYOUTS = {"data8": "mesh.data=8 mesh.fsdp=1 mesh.tensor=1", "fsdp8": "mesh.data=1 mesh.fsdp=8 mesh.tensor=1",
           "mixed": "mesh.data=2 mesh.fsdp=2 mesh.tensor=2"}


@pytest.fixture(scope="module")
def eight_device_runs(tmp_path_factory, jax_cache_dir, reference_run):
    """Midtraining in every layout, then LoRA SFT from the 1-device midtraining run (mixed layout)."""
    root = tmp_path_factory.mktemp("layouts")
    runs = [{"run_dir": str(root / name), "overrides": REFERENCE_OVERRIDES + mesh.split()}
            for name, mesh in LAYOUTS.items()]
    runs.append({"run_dir": str(root / "sft_mixed"), "chats": True,
                 "overrides": sft_overrides(reference_run[0]) + LAYOUTS["mixed"].split()})
    summaries, _ = run_worker(jax_cache_dir, devices=8, runs=runs)
    assert all(s["devices"] == 8 for s in summaries)
    return root


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_eight_device_layout_matches_single_device_losses(layout, eight_device_runs, reference_run):
    _, expected = reference_run
    got = losses(eight_device_runs / layout)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step


def test_lora_sft_on_eight_devices_matches_single_device_losses(eight_device_runs, sft_reference_run):
    _, expected = sft_reference_run
    got = losses(eight_device_runs / "sft_mixed")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step


def test_checkpoint_from_eight_devices_continues_on_four(tmp_path, eight_device_runs, reference_run, jax_cache_dir):
    _, expected = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(eight_device_runs / "fsdp8", run_dir)
    for step in (6, 8):  # keep the fsdp=8 checkpoint of step 4 only
        shutil.rmtree(run_dir / str(step))
    truncate_metrics(run_dir, 4)
    overrides = REFERENCE_OVERRIDES + "mesh.data=2 mesh.fsdp=2 mesh.tensor=1".split()
    summary, _ = run_worker(jax_cache_dir, devices=4, run_dir=str(run_dir), overrides=overrides)
    assert summary["devices"] == 4 and summary["steps"] == STEPS
    got = losses(run_dir)
    for step in range(5, STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step
