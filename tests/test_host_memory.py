"""`msm` re-executes itself once with glibc's huge-page tunable, keeps the user's other
tunables, and leaves the environment alone when opted out or already set."""

import os
import subprocess
import sys

import pytest

from msm_jax import host_memory

PROBE = """
import os, sys
from msm_jax.host_memory import reexec_with_huge_pages
print("start", os.getpid(), flush=True)
reexec_with_huge_pages()
print("env", os.environ.get("GLIBC_TUNABLES"), os.getpid(), sys.argv[1:])
"""

needs_glibc = pytest.mark.skipif(not host_memory.wanted({}), reason="not Linux with glibc")


def clean_env(**env) -> dict:
    """This environment without any huge-page setting, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.OPT_OUT)}
    return dict(base, **env)


def run_probe(**env) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, "a", "b=1"], env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")


@needs_glibc
def test_the_process_restarts_once_with_the_tunable_and_its_arguments():
    first, second, third, *_ = run_probe(GLIBC_TUNABLES="glibc.malloc.arena_max=2")
    (_, pid_a), (_, pid_b) = first.split(), second.split()
    assert first.startswith("start") and second.startswith("start") and pid_a == pid_b  # exec keeps the PID
    assert third == f"env glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1 {pid_a} ['a', 'b=1']"


@needs_glibc
@pytest.mark.parametrize("env", [{"MSM_HUGE_PAGES": "0"}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}])
def test_opting_out_or_an_own_setting_runs_once_unchanged(env):
    out = run_probe(**env)
    assert out[0].startswith("start") and out[1].startswith(f"env {env.get('GLIBC_TUNABLES')} ")


def test_only_the_tunable_is_added():
    assert host_memory.with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert not host_memory.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert not host_memory.wanted({"MSM_HUGE_PAGES": "0"})
    assert host_memory.enabled({"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1"})
    assert not host_memory.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) and not host_memory.enabled({})


@needs_glibc
@pytest.mark.parametrize("call, restarts", [("entry", True), ("main", False)])
def test_only_the_msm_executable_restarts_itself_never_a_call_of_main_from_python(call, restarts):
    code = ("import os, sys; print('start', flush=True); sys.argv = ['msm']; from msm_jax import cli; "
            f"cli.{call}(); print('env', os.environ.get('GLIBC_TUNABLES'))")
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("start", "env"))]
    assert lines == ["start"] * (1 + restarts) + [f"env {'glibc.malloc.hugetlb=1' if restarts else None}"]
