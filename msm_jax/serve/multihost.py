"""Every process of a multi-host slice decodes every batch; only process 0 hears HTTP.

Process 0 broadcasts each batch (prompts and sampling options, as JSON bytes) before it
runs it; the other processes wait in `follow`, receive the same batch and run the same
sampler call, so the sharded computation sees one program on every host. The byte
buffer is padded to a power of two so the broadcast compiles for only a few sizes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Optional

import numpy as np

from msm_jax.sampling import SamplingParams

SHUTDOWN = {"shutdown": True}
NOOP = {"noop": True}


def is_leader() -> bool:
    import jax
    return jax.process_index() == 0


def multiprocess() -> bool:
    import jax
    return jax.process_count() > 1


def broadcast(message: Optional[dict]) -> dict:
    """Process 0's `message` on every process (others pass None)."""
    from jax.experimental import multihost_utils
    data = json.dumps(message).encode() if is_leader() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
    buf = np.zeros(max(1024, 1 << (size - 1).bit_length()), np.uint8)
    buf[:len(data)] = np.frombuffer(data, np.uint8)
    buf = multihost_utils.broadcast_one_to_all(buf)
    return json.loads(bytes(buf[:size]).decode())


def batch_message(prompts: list[list[int]], params: SamplingParams) -> dict:
    return {"prompts": prompts, "params": dataclasses.asdict(params)}


def follow(run: Callable[[list[list[int]], SamplingParams], Any]) -> None:
    """A non-zero process's life: run each broadcast batch until process 0 shuts down."""
    while True:
        msg = broadcast(None)
        if msg.get("shutdown"):
            return
        if msg.get("noop"):
            continue
        p = msg["params"]
        run(msg["prompts"], SamplingParams(**{**p, "stop": tuple(p["stop"])}))
