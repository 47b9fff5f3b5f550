"""A stage's manifest: `STAGE_DIR/stage.json`, written when the stage starts and when it ends.

It records the stage's key (the hash of its inputs and config), its command line and its
state. A finished stage with the same key is skipped; a stage that started but never
finished (killed, failed, preempted) runs again in the same folder, where a train stage
resumes from its own checkpoints and the generation store answers every request it already
paid for.
"""

from __future__ import annotations

import json
import time
from typing import Literal, Optional

from msm_jax.errors import UserError
from msm_jax.experiment import paths

MANIFEST_FILE = "stage.json"

Status = Literal["done", "resume", "run"]


def manifest_path(stage_dir: str) -> str:
    return paths.join(stage_dir, MANIFEST_FILE)


def read_manifest(stage_dir: str) -> Optional[dict]:
    path = manifest_path(stage_dir)
    if not paths.exists(path):
        return None
    try:
        data = json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt stage manifest ({e}); delete it to re-run the stage") from None
    return data if isinstance(data, dict) else None


def stage_status(stage) -> Status:
    """done: finished with this key; resume: started with this key; run: never started."""
    manifest = read_manifest(stage.dir)
    if manifest is None or manifest.get("key") != stage.key:
        return "run"
    return "done" if manifest.get("state") == "done" else "resume"


def _write(stage, **fields) -> dict:
    previous = read_manifest(stage.dir) or {}
    if previous.get("key") != stage.key:
        previous = {}
    data = {**previous, "id": stage.id, "kind": stage.kind, "key": stage.key, "argv": stage.argv, **fields}
    paths.write_text(manifest_path(stage.dir), json.dumps(data, indent=1) + "\n")
    return data


def mark_started(stage) -> dict:
    previous = read_manifest(stage.dir) or {}
    attempts = previous.get("attempts", 0) + 1 if previous.get("key") == stage.key else 1
    return _write(stage, state="running", attempts=attempts, started=time.time(), finished=None)


def mark_finished(stage, ok: bool, seconds: float, extra: Optional[dict] = None) -> dict:
    return _write(stage, state="done" if ok else "failed", finished=time.time(), seconds=round(seconds, 2),
                  **(extra or {}))
