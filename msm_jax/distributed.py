"""Multi-host start-up: `jax.distributed.initialize` from the run config or environment.

On a multi-host Cloud TPU VM, JAX discovers the coordinator itself (no arguments). Elsewhere
(GPU clusters, two local CPU processes in tests) the coordinator address, process count and
process id come from the config or from MSM_COORDINATOR_ADDRESS / MSM_NUM_PROCESSES /
MSM_PROCESS_ID. Must run before anything touches a JAX device.
"""

from __future__ import annotations

import os

from msm_jax.errors import UserError
from msm_jax.train.config import DistributedConfig

ENV = {"coordinator_address": "MSM_COORDINATOR_ADDRESS", "num_processes": "MSM_NUM_PROCESSES",
       "process_id": "MSM_PROCESS_ID"}


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


def initialize(cfg: DistributedConfig) -> bool:
    """Initialise jax.distributed when configured or on a multi-host TPU VM; True if it did."""
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
    jax.distributed.initialize(**settings)
    return True
