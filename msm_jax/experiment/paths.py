"""Paths that may be local or `gs://`: the few file operations the experiment runner needs.

Local paths go through pathlib; remote ones through `etils.epath` (installed with Orbax),
which reads and writes Cloud Storage when a GCS backend (gcsfs or TensorFlow) is present,
as on the TPU VM images. Everything else in the runner treats paths as plain strings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from msm_jax.errors import UserError

PathLike = Union[str, os.PathLike]

REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(path: PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


class RemoteUnavailable(UserError):
    """A gs:// path on a machine without a Cloud Storage backend."""


def as_path(path: PathLike):
    """A pathlib.Path for local paths, an epath.Path for remote ones."""
    if is_remote(path):
        from etils import epath
        return epath.Path(str(path))
    return Path(path)


def _remote(fn):
    """Turn a missing GCS backend into a message that says what to install."""
    def wrapped(path, *args):
        try:
            return fn(path, *args)
        except ImportError as e:
            raise RemoteUnavailable(f"{path}: cannot reach Cloud Storage from here ({e}); "
                                    "`pip install gcsfs` and `gcloud auth application-default login`, "
                                    "or run on a TPU VM") from None
    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...` as a string, keeping the `gs://` scheme intact."""
    text = str(base).rstrip("/")
    for part in parts:
        text = f"{text}/{part.strip('/')}"
    return text


@_remote
def exists(path: PathLike) -> bool:
    return as_path(path).exists()


@_remote
def read_text(path: PathLike) -> str:
    return as_path(path).read_text()


@_remote
def write_text(path: PathLike, text: str) -> None:
    """Write atomically where the filesystem allows it (local: temp file + rename)."""
    p = as_path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
        p.write_text(text)  # a GCS object appears whole or not at all
        return
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


@_remote
def makedirs(path: PathLike) -> None:
    as_path(path).mkdir(parents=True, exist_ok=True)


def content_hash(path: PathLike) -> str:
    """sha256 of a local file, or of every file below a local folder (names and contents).
    Remote inputs are identified by their path: their content is another stage's output."""
    if is_remote(path):
        return hashlib.sha256(f"remote:{path}".encode()).hexdigest()
    p = Path(path)
    digest = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        digest.update(str(f.relative_to(p) if f != p else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
