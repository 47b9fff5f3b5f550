"""Two processes joined by jax.distributed over 127.0.0.1, each loading only its half of
every global batch, train exactly like one process."""

import pytest
from train_fixtures import (REFERENCE_OVERRIDES, free_port, jax_cache_dir, losses, reference_run,  # noqa: F401
                            sft_overrides, sft_reference_run, start_worker)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, jax_cache_dir):
    """Midtraining, then LoRA SFT from it, in the same two processes."""
    root = tmp_path_factory.mktemp("multihost")
    port = free_port()
    runs = [{"run_dir": str(root / "mid"), "overrides": REFERENCE_OVERRIDES + ["checkpoint.every_steps=8"]},
            {"run_dir": str(root / "sft"), "overrides": sft_overrides(root / "mid"), "chats": True}]
    procs = [start_worker(jax_cache_dir, devices=1, runs=runs, process_id=i, num_processes=2, port=port)
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert '"processes": 2' in outputs[0][0] and '"devices": 2' in outputs[0][0]
    return root


def assert_same_losses(got, expected):
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step


def test_two_processes_match_one_process_midtraining_losses(two_process_runs, reference_run):
    assert_same_losses(losses(two_process_runs / "mid"), reference_run[1])  # written by process 0 only


def test_two_processes_match_one_process_lora_sft_losses(two_process_runs, sft_reference_run):
    assert_same_losses(losses(two_process_runs / "sft"), sft_reference_run[1])


def test_distributed_settings_come_from_config_then_environment(monkeypatch):
    from msm_jax.distributed import _settings, initialize
    from msm_jax.errors import UserError
    from msm_jax.train.config import DistributedConfig

    monkeypatch.setenv("MSM_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("MSM_NUM_PROCESSES", "4")
    monkeypatch.setenv("MSM_PROCESS_ID", "2")
    assert _settings(DistributedConfig(process_id=3)) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert initialize(DistributedConfig(mode="off")) is False
    monkeypatch.setenv("MSM_NUM_PROCESSES", "four")
    with pytest.raises(UserError, match="MSM_NUM_PROCESSES='four' must be an integer"):
        _settings(DistributedConfig())
