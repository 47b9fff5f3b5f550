"""Host allocator settings for XLA:CPU: keep freed memory for the next step.

XLA:CPU takes each step's temporary buffers (211 MB for the 5.28M benchmark model) in one
allocation. glibc serves an allocation that size from a fresh `mmap` on the threads XLA runs
on, so every step page-faults all of it in again (51.6k faults per step) and zero-filling
the scan's stacked buffers ran at page-fault speed. Served from one heap that is never
trimmed, the faults are gone (5.28M profile: scan buffers 134 -> 59 ms of CPU a step).
The cost: freed host memory stays with the process for reuse instead of going back to
the OS, so this is applied only where JAX will run on the CPU.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

# glibc <malloc.h> mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
SETTINGS = ((_M_ARENA_MAX, 1),             # XLA's threads share the main heap (other arenas mmap large blocks)
            (_M_MMAP_MAX, 0),              # large blocks come from the heap, not a fresh mmap each time
            (_M_TRIM_THRESHOLD, 2**31 - 1),  # freed memory at the heap's top is kept
            (_M_TOP_PAD, 256 << 20))       # and the heap grows in large steps
OPT_OUT = "MSM_HOST_MALLOC"  # =system leaves glibc's defaults


def jax_runs_on_cpu_only() -> bool:
    """Whether JAX will find no accelerator, decided without initialising JAX (the settings
    must come before its threads exist): JAX_PLATFORMS, else no TPU or GPU plugin installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.lower() == "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return False
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    try:
        import jax_plugins  # namespace package of the CUDA/ROCm plugins
    except ImportError:
        return True
    import pkgutil

    return not any(pkgutil.iter_modules(jax_plugins.__path__))


def keep_freed_memory() -> bool:
    """Apply SETTINGS through glibc's mallopt when JAX will run on the CPU. Call it before
    JAX starts its threads (first thing in a process). Returns whether they were applied."""
    if os.environ.get(OPT_OUT, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    if not jax_runs_on_cpu_only():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
