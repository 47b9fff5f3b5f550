"""Paths that may be local or `gs://`: the few file operations the experiment runner needs.

Local paths go through pathlib; remote ones through `etils.epath` (installed with Orbax),
which reads and writes Cloud Storage when a GCS backend (gcsfs or TensorFlow) is present,
as on the TPU VM images. Everything else in the runner treats paths as plain strings.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Union

from msm_jax.errors import UserError

PathLike = Union[str, os.PathLike]

REMOTE_PREFIXES = ("gs://", "s3://")


def is_remote(path: PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


class RemoteUnavailable(UserError):
    """A gs:// path on a machine without a Cloud Storage backend."""


# Folders this machine does not mount but can reach in Cloud Storage: "/gcs/BUCKET/" ->
# "gs://BUCKET/". `msm run --launcher tpu` routes the TPU workers' gcsfuse mount this way, so
# the orchestrator reads and writes stage manifests through gs:// without a mount of its own.
_ROUTES: dict[str, str] = {}


def route(local_prefix: str, remote_prefix: str) -> None:
    _ROUTES[local_prefix.rstrip("/") + "/"] = remote_prefix.rstrip("/") + "/"


def routed(path: PathLike) -> str | None:
    """The gs:// form of a path under a routed folder, else None."""
    text = str(path).rstrip("/") + "/"
    for local, remote in _ROUTES.items():
        if text.startswith(local):
            return (remote + text[len(local):]).rstrip("/")
    return None


def as_path(path: PathLike):
    """A pathlib.Path for local paths, an epath.Path for remote (or routed) ones."""
    remote = routed(path) or (str(path) if is_remote(path) else None)
    if remote is not None:
        from etils import epath
        return epath.Path(remote)
    return Path(path)


_GCS_HOST = "storage.googleapis.com"


def _gcs_resolves() -> bool:
    """Whether this machine can resolve Cloud Storage's host (an emulator counts as yes):
    an offline machine then fails at once instead of after gcsfs's retries."""
    return bool(os.environ.get("STORAGE_EMULATOR_HOST")) or _host_resolves(_GCS_HOST)


@functools.lru_cache(maxsize=None)
def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _check_reachable(path: PathLike) -> None:
    remote = routed(path) or str(path)
    if not remote.startswith("gs://"):
        return
    bucket = remote[len("gs://"):].split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise RemoteUnavailable(f"{path}: {bucket!r} is not a Cloud Storage bucket name (lowercase letters, "
                                "digits, dashes, dots)")
    if not _gcs_resolves():
        raise RemoteUnavailable(f"{path}: cannot reach Cloud Storage from here ({_GCS_HOST} does not resolve)")


def _remote(fn):
    """Turn a missing GCS backend or an unreachable bucket into a message that says what to do."""
    def wrapped(path, *args):
        if is_remote(path) or routed(path):
            _check_reachable(path)
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
    if is_remote(path) or routed(path):
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
