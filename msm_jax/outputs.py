"""One set of rules for every writer in the stack, so that no command loses a user's files.

- A file is written to a temporary name beside it and renamed into place: a reader sees the
  old file or the new one, never half of one (`atomic_write_text`, `atomic_write_bytes`,
  `atomic_open`).
- An output folder is *claimed* before anything is written into it (`claim_output_dir`): a
  marker file records which command owns it and which files it wrote. A folder that is not
  empty and carries no marker of the same kind belongs to somebody else and is refused
  (unless the user passes `--overwrite`, which still never deletes a file we did not write).
- When a command rewrites its own folder, the files the previous run wrote and this run did
  not are removed (`OutputDir.finish`), so a stale `model.safetensors` never sits beside a new
  sharded export; files we did not write are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

from msm_jax.errors import UserError

MARKER = ".msm-output.json"
# Files the experiment runner keeps in each stage folder it hands to a command as its output:
# msm's own bookkeeping, so they do not make that folder someone else's.
RUNNER_FILES = (MARKER, "stage.json", "stage.log")
PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs) -> Iterator:
    """Open a temporary file beside `path`; on a clean exit it replaces `path` atomically,
    on an exception it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_marker(path: PathLike) -> Optional[dict]:
    """The marker of an output folder, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


@dataclass
class OutputDir:
    """A claimed output folder. Call `wrote(name)` for each file written (relative names),
    then `finish()` to record them and drop what the previous run of this kind wrote and
    this one did not."""

    path: Path
    kind: str
    previous: list[str] = field(default_factory=list)
    written: set[str] = field(default_factory=set)

    def wrote(self, *names: str) -> None:
        self.written.update(str(n) for n in names)

    def finish(self) -> None:
        for name in self.previous:
            if name not in self.written:
                stale = self.path / name
                if stale.is_file() or stale.is_symlink():
                    stale.unlink()
        atomic_write_text(self.path / MARKER,
                          json.dumps({"kind": self.kind, "files": sorted(self.written)}, indent=1))


def claim_output_dir(path: PathLike, kind: str, *, overwrite: bool = False,
                     option: str = "--out") -> OutputDir:
    """Make `path` ours for a command of `kind` (e.g. "hf-export"), or refuse with one line.

    Accepted: a missing or empty folder, or one whose marker says `kind`. A non-empty folder
    without our marker is refused unless `overwrite`; one owned by another kind is refused
    even then, since its files are another stage's output."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another {option}")
    marker = read_marker(path) if path.exists() else None
    if marker is not None and marker.get("kind") != kind:
        raise UserError(f"{path}: holds the output of `{marker.get('kind')}`, not `{kind}`; "
                        f"choose another {option}")
    if marker is None and path.exists() and any(p.name not in RUNNER_FILES for p in path.iterdir()) and not overwrite:
        raise UserError(f"{path}: folder is not empty and was not written by msm ({kind}); choose an empty "
                        f"or new {option}, or pass --overwrite to write beside its files")
    path.mkdir(parents=True, exist_ok=True)
    previous = list(marker.get("files", [])) if marker else []
    if marker is None:
        atomic_write_text(path / MARKER, json.dumps({"kind": kind, "files": []}, indent=1))
    return OutputDir(path, kind, previous)
