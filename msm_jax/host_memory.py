"""Transparent huge pages for XLA:CPU's per-step temporaries.

XLA:CPU takes one block for a step's temporaries (211 MB for the 5.28M benchmark model),
and glibc serves a block that size from a fresh `mmap` each step, so every step faults all
of it in again, 4 KiB at a time: 51.6k minor faults per step at 5.28M. With glibc's
`glibc.malloc.hugetlb=1` tunable, malloc asks the kernel for transparent huge pages on such
blocks (`madvise`), and the faults fall to ~500 per step. The tunable is read only when a
process starts, so the `msm` executable (`msm_jax.cli.entry`) sets it and re-executes itself
once, before anything heavy is imported or anything printed; the process keeps its PID.
`MSM_HUGE_PAGES=0` opts out. Where the kernel has transparent huge pages off, or the C library
is not glibc, the setting does nothing.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "MSM_HUGE_PAGES"


def wanted(environ: dict) -> bool:
    """Whether this process should re-execute itself with huge pages: on Linux with glibc,
    not opted out, and the tunable not already set (by us or by the user)."""
    if environ.get(OPT_OUT, "1") == "0" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def enabled(environ: dict) -> bool:
    """Whether this process runs with the tunable on (as `msm` and the benchmarks report it)."""
    return f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "").split(":")


def with_huge_pages(environ: dict) -> dict:
    """`environ` with the tunable added to GLIBC_TUNABLES (the user's other tunables kept)."""
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    return dict(environ, GLIBC_TUNABLES=":".join(tunables + [f"{TUNABLE}=1"]))


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command line with the tunable set (see the module
    docstring); returns only where that is not wanted."""
    if not wanted(os.environ) or not sys.orig_argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_huge_pages(os.environ))
