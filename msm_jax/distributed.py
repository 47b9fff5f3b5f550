"""Multi-host start-up and the few cross-process primitives every stage needs.

On a multi-host Cloud TPU VM, JAX discovers the coordinator itself (no arguments). Elsewhere
(GPU clusters, a local pod of CPU processes) the coordinator address, process count and
process id come from the config or from MSM_COORDINATOR_ADDRESS / MSM_NUM_PROCESSES /
MSM_PROCESS_ID. `initialize` must run before anything touches a JAX device.

Side effects happen once: files outside Orbax, reports and paid API calls on the leader
(process 0) only, the others waiting at a `barrier`; a small result the leader computed
(which samples are already done, a summary) reaches the others with `broadcast_json`.
Both go through the coordination service's key-value store and barriers, so they need no
device and time out instead of hanging.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from msm_jax.errors import UserError
from msm_jax.train.config import DistributedConfig

ENV = {"coordinator_address": "MSM_COORDINATOR_ADDRESS", "num_processes": "MSM_NUM_PROCESSES",
       "process_id": "MSM_PROCESS_ID"}
# A process that dies (OOM, SIGKILL, a lost host) is declared dead by the coordination
# service after HEARTBEAT_TIMEOUT_S; every other process then fails instead of waiting in a
# collective forever. JAX's default is 100 s; a stage that fails in 30 s is rerun sooner.
HEARTBEAT_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 60  # how long a finished process waits at exit for the others
BARRIER_TIMEOUT_S = 600  # a barrier no one reaches in this long fails the stage
_calls: dict[str, int] = {}  # per name: how many times barrier/broadcast used it (unique keys)


def _settings(cfg: DistributedConfig) -> dict:
    out = {}
    for name, var in ENV.items():
        value = getattr(cfg, name)
        if value is None and os.environ.get(var):
            raw = os.environ[var]
            try:
                value = raw if name == "coordinator_address" else int(raw)
            except ValueError:
                raise UserError(f"environment variable {var}={raw!r} must be an integer") from None
        if value is not None:
            out[name] = value
    return out


def _multihost_tpu_vm() -> bool:
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(cfg: DistributedConfig = DistributedConfig()) -> bool:
    """Initialise jax.distributed when configured (config or environment) or on a multi-host
    TPU VM; True if it did. With no config, the environment alone decides (every JAX command
    calls this first, so a stage started on every host of a pod joins the same job)."""
    import jax

    if cfg.mode == "off":
        return False
    settings = _settings(cfg)
    if cfg.mode == "auto" and not settings and not _multihost_tpu_vm():
        return False
    if settings and "coordinator_address" not in settings:
        raise UserError("distributed: num_processes/process_id given without coordinator_address "
                        f"(set distributed.coordinator_address or {ENV['coordinator_address']})")
    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(**settings, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                               shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    return True


def is_leader() -> bool:
    """True on process 0, the one that writes files outside Orbax and calls paid APIs."""
    import jax

    return jax.process_index() == 0


def _client():
    """The coordination-service client, or None in a single process."""
    import jax
    from jax._src import distributed as jax_distributed

    if jax.process_count() == 1:
        return None
    return jax_distributed.global_state.client


def _unique(name: str) -> str:
    _calls[name] = _calls.get(name, 0) + 1
    return f"msm/{name}/{_calls[name]}"


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process reaches the barrier `name` (no-op in one process). Every
    process must call the same barriers in the same order."""
    client = _client()
    if client is None:
        return
    key = _unique(name)
    try:
        client.wait_at_barrier(key, int(timeout_s * 1000))
    except Exception as e:  # XlaRuntimeError: deadline exceeded, or a peer that died
        raise UserError(f"barrier {name!r}: not every process arrived within {timeout_s:.0f} s ({e})") from None


def broadcast_json(value: Any, name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> Any:
    """The leader's `value` (anything JSON can carry) on every process; the others' `value`
    is ignored. Every process must call it, in the same order."""
    client = _client()
    if client is None:
        return value
    key = _unique(name)
    if is_leader():
        client.key_value_set(key, json.dumps(value))
        return value
    try:
        return json.loads(client.blocking_key_value_get(key, int(timeout_s * 1000)))
    except Exception as e:
        raise UserError(f"broadcast {name!r}: nothing from process 0 within {timeout_s:.0f} s ({e})") from None


def on_leader(name: str, fn: Callable[[], Any], timeout_s: float = BARRIER_TIMEOUT_S) -> Any:
    """`fn()` on the leader alone (a side effect that must happen once: writing files outside
    Orbax), the others waiting at a barrier until it is done; its JSON-able result reaches every
    process. `fn` must not use collectives (Orbax saves, multi-host arrays): it runs alone."""
    result = fn() if is_leader() else None
    barrier(name, timeout_s)
    return broadcast_json(result, name, timeout_s)
