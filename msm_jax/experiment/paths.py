"""Paths that may be local or `gs://`: the few file operations the experiment runner needs,
through `msm_jax.storage`, plus the routing of a bucket mount this machine lacks (`route`).
Everything else in the runner treats paths as plain strings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from msm_jax import storage
from msm_jax.storage import PathLike, RemoteUnavailable, is_remote, join  # noqa: F401 (the runner's API)


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


def _remote_form(path: PathLike) -> str:
    return routed(path) or str(path)


def exists(path: PathLike) -> bool:
    return storage.exists(_remote_form(path))


def read_text(path: PathLike) -> str:
    return storage.read_text(_remote_form(path))


def write_text(path: PathLike, text: str) -> None:
    """Atomically (locally: temp file + rename; a gs:// object appears whole or not at all)."""
    storage.write_text(_remote_form(path), text)


def makedirs(path: PathLike) -> None:
    storage.makedirs(_remote_form(path))


def list_files(path: PathLike) -> list[str]:
    """Relative names of every file below a folder."""
    return sorted(storage.list_files(_remote_form(path)))


def local_copy(path: PathLike) -> str:
    """The path itself if local, else a local copy of the gs:// (or routed) file or folder."""
    return storage.localize(_remote_form(path))


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
