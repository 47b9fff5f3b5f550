"""msm_jax.host_memory: on the CPU, XLA's per-step temporaries come back from the heap
instead of being page-faulted in afresh at every call (and the opt-out restores glibc's
default behaviour)."""

import os
import subprocess
import sys

import pytest

from msm_jax import host_memory

PROBE = r"""
import resource
from msm_jax import host_memory
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp

def f(x):  # a scan's stacked outputs: a 64 MB temporary, like the layer scan's saved activations
    ys = jax.lax.scan(lambda c, _: (c + 1.0, jnp.sin(c * x)), 0.0, None, length=4)[1]
    return ys.sum(0)[0]

f = jax.jit(f)
x = jnp.ones((2048, 2048), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    f(x).block_until_ready()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


def _faults_per_call(**env) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_heap_stops_the_per_call_page_faults_and_the_opt_out_restores_them():
    applied, kept = _faults_per_call()
    default_applied, default = _faults_per_call(**{host_memory.OPT_OUT: "system"})
    assert applied and not default_applied
    assert default > 16384 > 2 * kept, (kept, default)  # 64 MB of 4 KiB pages faulted in at every call by default


def test_applies_only_when_jax_runs_on_the_cpu(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert not host_memory.jax_runs_on_cpu_only() and not host_memory.keep_freed_memory()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.jax_runs_on_cpu_only()
