"""Side effects once on a multi-host mesh: process 0 writes, the others wait for its outcome.

Conversions run on every process (each one reads and places the shards its devices hold),
but files outside Orbax (safetensors, config.json, output markers) are written by process 0
alone. `on_leader` runs a function there and hands its outcome to the other processes through
the jax.distributed key-value store, so a failure on process 0 fails every process with the
same one-line message instead of leaving them waiting at a barrier.
"""

from __future__ import annotations

import itertools
from typing import Callable, TypeVar

import jax
from jax.experimental import multihost_utils

from msm_jax.errors import UserError

T = TypeVar("T")
LEADER_TIMEOUT_S = 6 * 3600  # an export of a 32B model from gs:// takes well under this
_calls = itertools.count()  # same sequence on every process: each call gets its own key


def is_leader() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"msm-hf-{name}")


def on_leader(name: str, fn: Callable[[], T], timeout_s: float = LEADER_TIMEOUT_S) -> T | None:
    """fn() on process 0; elsewhere None once process 0 has finished, or its error re-raised."""
    if jax.process_count() == 1:
        return fn()
    from jax._src import distributed

    client = distributed.global_state.client
    key = f"msm-hf/{name}/{next(_calls)}"
    if is_leader():
        try:
            out = fn()
        except BaseException as e:
            client.key_value_set(key, f"error: {e if isinstance(e, UserError) else repr(e)}"[:4000])
            raise
        client.key_value_set(key, "ok")
        return out
    status = client.blocking_key_value_get(key, int(timeout_s * 1000))
    if status != "ok":
        raise UserError(f"{name} failed on process 0: {status.removeprefix('error: ')}")
    return None
