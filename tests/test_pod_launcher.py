"""The launchers: where each stage starts (every host or host 0), and a local pod that fails a
stage at once, naming the process, when one of its processes fails or dies."""

import json
import sys
import time

import pytest
from experiment_fixtures import write_experiment

from msm_jax.cli import main as msm
from msm_jax.errors import UserError
from msm_jax.experiment.manifest import read_manifest
from msm_jax.experiment.launchers import LocalPodLauncher, TpuLauncher, placement, pod_env
from msm_jax.experiment.runner import run_stages
from msm_jax.experiment.stages import Stage

# A stand-in for `msm`: records its pod environment, then behaves as argv asks for its process id.
CHILD = """
import json, os, signal, sys, time
out, actions = sys.argv[1], json.loads(sys.argv[2])
pid = os.environ.get("MSM_PROCESS_ID", "solo")
keys = ("MSM_COORDINATOR_ADDRESS", "MSM_NUM_PROCESSES", "MSM_PROCESS_ID", "XLA_FLAGS", "JAX_PLATFORMS")
with open(f"{out}/{pid}.json", "w") as f:
    json.dump({k: os.environ.get(k) for k in keys} | {"pid": os.getpid()}, f)
print(f"child {pid} started")
action = actions.get(pid, "ok")
while action != "sleep" and "0" in actions and not os.path.exists(f"{out}/0.json"):
    time.sleep(0.05)  # fail only once process 0 is up (and recorded its pid)
if action == "sleep":
    time.sleep(600)
elif action == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
elif action.startswith("exit"):
    print(f"child {pid} gives up"); sys.exit(int(action[4:]))
"""


def stage(tmp_path, kind="midtrain", **actions) -> Stage:
    return Stage(id=f"{kind}/a", kind=kind, argv=[str(tmp_path), json.dumps(actions)], deps=[],
                 dir=str(tmp_path / "stage"), key="k")


def pod(processes=2, devices=4) -> LocalPodLauncher:
    return LocalPodLauncher(processes, devices, msm_prefix=[sys.executable, "-c", CHILD])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_jax_stages_start_on_every_host_and_cpu_stages_on_host_zero():
    kinds = {k: placement(Stage(id=k, kind=k, argv=[], deps=[])) for k in
             ("generate", "tokenizer", "shards", "report", "import", "pretrain", "midtrain", "sft", "export", "eval")}
    assert [k for k, where in kinds.items() if where == "0"] == ["generate", "tokenizer", "shards", "report"]
    tpu = TpuLauncher("v5p", "z")
    for kind, workers in (("import", "all"), ("export", "all"), ("eval", "all"), ("shards", "0")):
        cmd = tpu.command(Stage(id=kind, kind=kind, argv=["x"], deps=[]))
        assert cmd[cmd.index("--workers") + 1] == workers


def test_local_pod_starts_each_process_with_its_coordinator_id_and_fake_devices(tmp_path):
    st = stage(tmp_path)
    (tmp_path / "stage").mkdir()
    log = tmp_path / "stage" / "stage.log"
    outcome = pod(3, 2).run(st, log)
    assert outcome.returncode == 0
    envs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(3)]
    assert len({e["MSM_COORDINATOR_ADDRESS"] for e in envs}) == 1
    assert envs[0]["MSM_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
    assert [(e["MSM_NUM_PROCESSES"], e["MSM_PROCESS_ID"]) for e in envs] == [("3", "0"), ("3", "1"), ("3", "2")]
    assert all(e["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=2") for e in envs)
    for i in range(3):  # one log per process, and the stage log says where they are
        assert f"child {i} started" in (tmp_path / "stage" / f"stage.p{i}.log").read_text()
    assert "stage.p0.log, stage.p1.log, stage.p2.log" in log.read_text()


def test_local_pod_runs_cpu_stages_once_without_a_coordinator(tmp_path):
    (tmp_path / "stage").mkdir()
    assert pod().run(stage(tmp_path, kind="shards"), tmp_path / "stage" / "stage.log").returncode == 0
    solo = json.loads((tmp_path / "solo.json").read_text())
    assert solo["MSM_COORDINATOR_ADDRESS"] is None and not (tmp_path / "0.json").exists()


def test_pod_env_replaces_a_device_count_and_keeps_other_xla_flags():
    env = pod_env({"XLA_FLAGS": "--a=1 --xla_force_host_platform_device_count=8 --b"}, port=5, processes=2,
                  process_id=1, devices=4)
    assert env["XLA_FLAGS"] == "--a=1 --b --xla_force_host_platform_device_count=4"


@pytest.mark.parametrize("action, how", [("exit3", "exit 3"), ("sigkill", "killed by SIGKILL")])
def test_a_failed_process_stops_the_others_and_fails_the_stage_naming_it(tmp_path, action, how):
    st = stage(tmp_path, **{"0": "sleep", "1": action})
    start = time.time()
    with pytest.raises(UserError) as e:
        run_stages([st], pod(), out=lambda line: None)
    assert time.time() - start < 20  # the sleeper (600 s) was stopped, not waited for
    message = str(e.value)
    assert f"stage midtrain/a failed (process 1 of 2: {how}, the others stopped)" in message
    assert "stage.p1.log" in message
    if action == "exit3":
        assert "child 1 gives up" in message  # the tail of the failed process's own log
    sleeper = json.loads((tmp_path / "0.json").read_text())["pid"]
    assert not alive(sleeper)
    assert read_manifest(st.dir)["state"] == "failed"


def test_msm_run_plans_jax_stages_on_the_local_pod_and_cpu_stages_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_experiment(tmp_path)
    flags = ["--launcher", "local-pod", "--processes", "2", "--devices-per-process", "4", "--dry-run"]
    assert msm(["run", str(config), *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = next(line for line in lines if " msm_jax.cli train " in line)
    assert "$ local-pod --processes=2 --devices-per-process=4 -- " in train
    shards = next(line for line in lines if " msm_jax.cli shards " in line)
    assert "local-pod" not in shards
    assert msm(["run", str(config), "--launcher", "local-pod", "--processes", "0", "--dry-run"]) == 1
    assert "--processes (0) and --devices-per-process (4) must be at least 1" in capsys.readouterr().err
