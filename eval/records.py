"""Append-only JSONL records: every transcript and verdict is written as soon as it
exists, so an interrupted eval resumes where it stopped and nothing paid for is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from msm_jax.errors import UserError


def read_jsonl(path: str | Path, *, tolerate_torn_tail: bool = False) -> list[dict]:
    """Rows of a JSONL file ([] when absent). A malformed line is an error naming file and
    line, except a torn last line (a crash mid-write) when `tolerate_torn_tail`."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if tolerate_torn_tail and n == len(lines):
                print(f"warning: {path}:{n}: ignoring a torn last line (interrupted write); it will be redone")
                break
            raise UserError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return rows


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows and flush to disk. A torn last line left by a crash is cut first so
    the new rows start on a line of their own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = path.read_bytes()
                f.seek(0)
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, obj: object) -> None:
    """Write atomically (tmp file + rename) so a reader never sees half a summary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
