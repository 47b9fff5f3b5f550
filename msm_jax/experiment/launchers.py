"""How a stage's `msm` command starts on the hosts of a run.

A stage has a placement: JAX stages (import, pretrain, midtrain, sft, export, eval, ...)
run on every host at once, each process joining one jax.distributed job and doing its share
on the global mesh; CPU stages (generate, tokenizer, shards) run on host 0 alone. A launcher
only knows how to start a command line on every host or on host 0, and how to tell whether
all of them succeeded:
- `Launcher`: this machine is the only host (one process).
- `LocalPodLauncher`: P local processes with D fake CPU devices each, joined through
  jax.distributed over 127.0.0.1: a multi-host slice rehearsed on one machine.
- `TpuLauncher`: the workers of a Cloud TPU VM, through tools/tpu/run_stage.sh.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from msm_jax.experiment.stages import Stage
from msm_jax.storage import is_remote

ONE_HOST_KINDS = ("generate", "tokenizer", "shards", "report")  # CPU-only stages; every other kind is JAX
ALL_HOSTS, HOST_0 = "all", "0"
POLL_S = 0.2
KILL_GRACE_S = 5.0  # after a peer died: SIGTERM the others, SIGKILL those still alive this much later


def placement(stage: Stage) -> str:
    """ALL_HOSTS for a JAX stage (a lone process cannot bring up a multi-host slice), HOST_0
    for a CPU stage (its side effects, API calls included, happen once)."""
    return HOST_0 if stage.kind in ONE_HOST_KINDS else ALL_HOSTS


@dataclasses.dataclass
class Outcome:
    returncode: int  # 0 when every process succeeded
    failure: str = ""  # which process failed and how, for the error message
    log: Optional[Path] = None  # the log to show the tail of (the failed process's own)


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


class Launcher:
    """One host, this machine: the stage's command runs as one local process."""

    def __init__(self, msm_prefix: Optional[Sequence[str]] = None, env: Optional[dict] = None):
        self.msm_prefix = list(msm_prefix or [sys.executable, "-m", "msm_jax.cli"])
        self.env = env  # the stages' environment; None: this process's

    def msm_command(self, stage: Stage) -> list[str]:
        return self.msm_prefix + stage.argv

    def command(self, stage: Stage) -> list[str]:
        """The command line the plan shows and the log records."""
        return self.msm_command(stage)

    def run(self, stage: Stage, log: Path) -> Outcome:
        """Start the stage where its placement says and wait for it; logs go to `log`."""
        cmd = self.command(stage)
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env).returncode
        return Outcome(rc, "" if rc == 0 else _exit_text(rc), log)


class TpuLauncher(Launcher):
    """The workers of a TPU VM through tools/tpu/run_stage.sh: `--workers all` for JAX stages
    (every worker initialises jax.distributed itself), `--workers 0` for CPU stages. A worker
    that dies makes the others fail within msm_jax.distributed.HEARTBEAT_TIMEOUT_S, so the
    ssh command returns instead of hanging."""

    def __init__(self, name: str, zone: str, project: Optional[str] = None,
                 script: str = "tools/tpu/run_stage.sh"):
        super().__init__(["msm"])
        self.name, self.zone, self.project, self.script = name, zone, project, script

    def command(self, stage: Stage) -> list[str]:
        cmd = ["bash", self.script, "--name", self.name, "--zone", self.zone, "--workers", placement(stage)]
        if self.project:
            cmd += ["--project", self.project]
        return cmd + ["--", *self.msm_command(stage)]


CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def compile_cache_env(out_root: str) -> Optional[dict]:
    """This process's environment plus JAX's persistent compilation cache in `out_root`/jax_cache,
    for stages that run on this machine: the arms' midtraining, SFT, export and eval compile
    the same programs, and a rerun compiles nothing (the demo's SFT stage: 37.4 s with a
    14.7 s first step, 26.3 s with a 3.5 s first step from the cache). None (no change) when
    the user set the cache themselves or the experiment lives in a bucket. Compiled XLA:CPU
    code is specific to the machine's processor, hence a folder per experiment, not a global one."""
    if CACHE_ENV in os.environ or is_remote(out_root):
        return None
    return dict(os.environ, **{CACHE_ENV: str(Path(out_root, "jax_cache").absolute())})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_env(base: dict, *, port: int, processes: int, process_id: int, devices: int) -> dict:
    """The environment of process `process_id` of a local pod: where the coordinator is
    (msm_jax.distributed reads MSM_*) and how many fake CPU devices this process has."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", "")).split()
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return {**base, "MSM_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "MSM_NUM_PROCESSES": str(processes),
            "MSM_PROCESS_ID": str(process_id), "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}


class LocalPodLauncher(Launcher):
    """A multi-host slice rehearsed on this machine: a JAX stage starts as `processes` local
    processes with `devices` fake CPU devices each, joined through jax.distributed over
    127.0.0.1; a CPU stage starts once. Each process logs to STAGE/stage.pN.log. When one
    process fails or dies, the others are stopped at once and the stage fails naming it."""

    def __init__(self, processes: int, devices: int, msm_prefix: Optional[Sequence[str]] = None):
        super().__init__(msm_prefix)
        self.processes, self.devices = processes, devices

    def command(self, stage: Stage) -> list[str]:
        if placement(stage) == HOST_0:
            return self.msm_command(stage)
        return ["local-pod", f"--processes={self.processes}", f"--devices-per-process={self.devices}", "--",
                *self.msm_command(stage)]

    def run(self, stage: Stage, log: Path) -> Outcome:
        if placement(stage) == HOST_0:
            return super().run(stage, log)
        cmd, port = self.msm_command(stage), free_port()
        logs = [log.with_name(f"{log.stem}.p{i}{log.suffix}") for i in range(self.processes)]
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(self.command(stage))}\n"
                    f"# {self.processes} processes, coordinator 127.0.0.1:{port}; logs: "
                    f"{', '.join(p.name for p in logs)}\n")
        procs = []
        try:
            for i, path in enumerate(logs):
                env = pod_env(dict(os.environ), port=port, processes=self.processes, process_id=i,
                              devices=self.devices)
                with open(path, "a") as f:
                    f.write(f"$ {shlex.join(cmd)}\n")
                    f.flush()
                    # its own session, so stopping it stops whatever it started too
                    procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                                  start_new_session=True))
            outcome = self._wait(procs, logs)
        finally:
            _stop(procs)
        with open(log, "a") as f:
            f.write(f"# {outcome.failure or 'every process finished'}\n")
        return outcome

    def _wait(self, procs: list[subprocess.Popen], logs: list[Path]) -> Outcome:
        """Until all succeed, or the first failure (then the others are stopped)."""
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
            if failed:
                i = failed[0]
                return Outcome(codes[i], f"process {i} of {len(procs)}: {_exit_text(codes[i])}, "
                                         f"the others stopped", logs[i])
            if all(rc == 0 for rc in codes):
                return Outcome(0)
            time.sleep(POLL_S)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every process still running (and its children), SIGKILL after KILL_GRACE_S."""
    alive = [p for p in procs if p.poll() is None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + KILL_GRACE_S
        while alive and time.time() < deadline:
            alive = [p for p in alive if p.poll() is None]
            time.sleep(POLL_S)
        if not alive:
            return
    for p in alive:
        p.wait()
