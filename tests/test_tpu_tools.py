"""tools/tpu: the exact gcloud commands of a dry run, and the spot loop's recovery after a
preemption, driven by a fake `gcloud` on PATH."""

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools" / "tpu"

FAKE_GCLOUD = """#!/usr/bin/env bash
# Records every call; the TPU's state lives in $FAKE_TPU_STATE (a file).
echo "$*" >> "$FAKE_GCLOUD_CALLS"
case "$4" in
  describe) cat "$FAKE_TPU_STATE" 2>/dev/null || exit 1 ;;
  create) echo READY > "$FAKE_TPU_STATE" ;;
  delete) rm -f "$FAKE_TPU_STATE" ;;
esac
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
    assert tar[:2] == ["tar", "czf"] and tar[-3:] == ["-C", "/src", "."] and "--exclude=.venv" in tar
    assert scp[4:7] == ["scp", tar[2], "msm:msm-jax-src.tgz"] and "--worker=all" in scp
    assert ssh[4:7] == ["ssh", "msm", "--worker=all"]
    remote = ssh[ssh.index("--command") + 1]
    assert "pip install -q -e '.[tpu]' gcsfs" in remote


def test_run_stage_passes_the_command_through_two_shells_unchanged():
    argv = ["msm", "train", "c.yaml", 'data.sources=[{"path": "gs://b/s", "weight": 1.0}]', "run_dir=.msm_local/x"]
    proc = tool("run_stage.sh", "--name", "msm", "--zone", "z", "--workers", "0", "--dry-run", "--", *argv)
    (ssh,) = commands(proc)
    assert "--worker=0" in ssh
    remote = ssh[ssh.index("--command") + 1]
    prefix = "cd msm-jax && export PATH=$HOME/.local/bin:$PATH && "
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
    for name, text in (("gcloud", FAKE_GCLOUD), ("preempted_once", PREEMPTED_ONCE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "setup.cfg").write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_CALLS=str(tmp_path / "calls"),
               FAKE_TPU_STATE=str(tmp_path / "state"), MARKER=str(tmp_path / "marker"), MSM_TPU_POLL_S="0",
               TMPDIR=str(tmp_path))
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
    assert "gcsfuse --implicit-dirs my-bucket /gcs/my-bucket" in mount[mount.index("--command") + 1]
