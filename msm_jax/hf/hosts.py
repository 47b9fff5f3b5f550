"""Conversion side effects once on a multi-host mesh: process 0 writes, the others wait for
its outcome.

Conversions run on every process (each one reads and places the shards its devices hold),
but files outside Orbax (safetensors, config.json, output markers) are written by process 0
alone. Unlike `msm_jax.distributed.on_leader`, `on_leader` here hands process 0's *outcome*
to the others (through `broadcast_json`): a failure there fails every process at once with
the same one-line message instead of leaving them at a barrier until it times out, and the
wait is long enough for exporting a 32B model.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax

from msm_jax.distributed import barrier, broadcast_json, is_leader
from msm_jax.errors import UserError

__all__ = ["barrier", "is_leader", "on_leader"]

T = TypeVar("T")
LEADER_TIMEOUT_S = 6 * 3600  # an export of a 32B model from gs:// takes well under this


def on_leader(name: str, fn: Callable[[], T], timeout_s: float = LEADER_TIMEOUT_S) -> T | None:
    """fn() on process 0; elsewhere None once process 0 has finished, or its error re-raised."""
    if jax.process_count() == 1:
        return fn()
    if not is_leader():
        outcome = broadcast_json(None, name, timeout_s)
        if outcome != "ok":
            raise UserError(f"{name} failed on process 0: {outcome}")
        return None
    try:
        out = fn()
    except BaseException as e:
        broadcast_json(str(e) if isinstance(e, UserError) else repr(e), name, timeout_s)
        raise
    broadcast_json("ok", name, timeout_s)
    return out
