"""Files that may live in Cloud Storage (`gs://BUCKET/...`) or on the local disk.

Every msm command accepts gs:// wherever it reads or writes a path:
- Inputs the libraries already read from Cloud Storage (Orbax checkpoints, through
  tensorstore) are read in place; other gs:// inputs (JSONL, tokenizers, shard folders,
  Hugging Face folders) are copied once into a local cache by `localize`, keyed by the
  objects' generations, so a re-written object is fetched again and an unchanged one never is.
- Outputs go to a local staging folder (`output_dir`) that the command fills as if it were
  the output folder, then `commit()` uploads what changed, oldest file first, so the file a
  command writes last (its manifest, summary or ownership marker) arrives last.

The backend is gcsfs. A local emulator is selected by `STORAGE_EMULATOR_HOST`, as Google's
own clients do: `use_emulator_from_env` derives from it what tensorstore and gcsfs need.
The local side lives under MSM_LOCAL_DIR (default `.msm_local` in the working directory).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union
from urllib.parse import urlparse

from msm_jax.errors import UserError

PathLike = Union[str, os.PathLike]
SCHEME = "gs://"
LOCAL_DIR_ENV = "MSM_LOCAL_DIR"
_GCS_HOST = "storage.googleapis.com"
# Left out of the staging copy of an output folder: the experiment runner writes these itself
# (stage.json, stage.log, and stage.pN.log per process of a multi-host stage).
RUNNER_FILE_PATTERN = re.compile(r"stage(\.p\d+)?\.log|stage\.json")


class RemoteUnavailable(UserError):
    """A gs:// path this machine cannot reach (no backend, no network, no such bucket)."""


def is_remote(path: PathLike) -> bool:
    return str(path).startswith(SCHEME)


def join(base: PathLike, *parts: str) -> str:
    """`base/part/...` as a string, keeping the `gs://` scheme intact."""
    text = str(base).rstrip("/")
    for part in parts:
        text = f"{text}/{part.strip('/')}"
    return text


def split(path: PathLike) -> tuple[str, str]:
    """(bucket, key) of a gs:// path."""
    bucket, _, key = str(path)[len(SCHEME):].partition("/")
    return bucket, key.strip("/")


def local_root() -> Path:
    return Path(os.environ.get(LOCAL_DIR_ENV) or ".msm_local")


# ---------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------


def use_emulator_from_env(environ=os.environ) -> None:
    """With STORAGE_EMULATOR_HOST set (`host:port` or a URL), point tensorstore (Orbax) at the
    same emulator, give the variable the scheme google-cloud-storage expects, and keep
    gcsfs and google-auth from probing the metadata server or a gRPC endpoint the emulator
    lacks. Called when every `msm` command starts; stages it launches inherit the result."""
    host = environ.get("STORAGE_EMULATOR_HOST")
    if not host or host == "default":
        return
    url = host if host.startswith(("http://", "https://")) else f"http://{host}"
    environ["STORAGE_EMULATOR_HOST"] = url  # google-cloud-storage (which Orbax calls) needs the scheme
    environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    environ.setdefault("NO_GCE_CHECK", "true")
    environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _emulator() -> Optional[str]:
    """The emulator's URL (with its scheme), or None for real Cloud Storage."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host or host == "default":
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


@functools.lru_cache(maxsize=None)
def _reachable(host: str, port: int, resolve_only: bool) -> bool:
    try:
        if resolve_only:
            socket.getaddrinfo(host, port)
        else:
            socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def _check(path: PathLike) -> None:
    """Fail at once, in one line, where gcsfs would retry for a minute."""
    bucket, _ = split(path)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise RemoteUnavailable(f"{path}: {bucket!r} is not a Cloud Storage bucket name (lowercase letters, "
                                "digits, dashes, dots)")
    emulator = _emulator()
    if emulator:
        url = urlparse(emulator)
        if not _reachable(url.hostname or "", url.port or 80, False):
            raise RemoteUnavailable(f"{path}: no Cloud Storage emulator answers at "
                                    f"STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']}")
    elif not _reachable(_GCS_HOST, 443, True):
        raise RemoteUnavailable(f"{path}: cannot reach Cloud Storage from here ({_GCS_HOST} does not resolve)")


def filesystem():
    """The gcsfs filesystem (anonymous against an emulator, application-default credentials
    otherwise), with no listing cache: other processes write the same bucket."""
    use_emulator_from_env()
    try:
        import gcsfs
    except ImportError as e:
        raise RemoteUnavailable(f"cannot reach Cloud Storage from here ({e}); `pip install gcsfs` and "
                                "`gcloud auth application-default login`, or run on a TPU VM") from None
    emulator = _emulator()
    if emulator:  # the endpoint is part of gcsfs's instance cache key: one instance per emulator.
        # The plain JSON-API class: gcsfs's default one may be its experimental subclass (chosen when
        # gcsfs is first imported), whose gRPC bucket-type probe hangs against an emulator.
        from gcsfs.core import GCSFileSystem
        return GCSFileSystem(token="anon", endpoint_url=emulator, use_listings_cache=False)
    return gcsfs.GCSFileSystem(use_listings_cache=False)


def _fs(path: PathLike):
    _check(path)
    return filesystem()


def _missing_bucket(fs, path: PathLike, error: Exception) -> UserError:
    bucket, _ = split(path)
    if not fs.exists(bucket):
        return RemoteUnavailable(f"{path}: bucket gs://{bucket} does not exist (create it, or fix the path)")
    return UserError(f"{path}: {error}")


# ---------------------------------------------------------------------------------------
# Small operations
# ---------------------------------------------------------------------------------------


def exists(path: PathLike) -> bool:
    """A file, or a folder (on gs://: any object below it)."""
    if not is_remote(path):
        return Path(path).exists()
    return _fs(path).exists(str(path))


def read_bytes(path: PathLike) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    fs = _fs(path)
    try:
        return fs.cat_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such object") from None


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically: locally a temporary file renamed into place; a gs:// object appears whole."""
    if not is_remote(path):
        from msm_jax.outputs import atomic_write_bytes
        atomic_write_bytes(path, data)
        return
    fs = _fs(path)
    try:
        fs.pipe_file(str(path), data)
    except FileNotFoundError as e:
        raise _missing_bucket(fs, path, e) from None


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def makedirs(path: PathLike) -> None:
    """Locally mkdir -p; on gs:// nothing (folders are key prefixes) but a check that the bucket exists."""
    if not is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)
        return
    fs = _fs(path)
    bucket, _ = split(path)
    if not fs.exists(bucket):
        raise RemoteUnavailable(f"{path}: bucket gs://{bucket} does not exist (create it, or fix the path)")


def list_files(path: PathLike) -> dict[str, dict]:
    """Every file below a folder: relative name -> {"size", "version"} (version: the object's
    generation on gs://, the mtime locally)."""
    if not is_remote(path):
        root = Path(path)
        if not root.is_dir():
            return {}
        return {str(f.relative_to(root)): {"size": f.stat().st_size, "version": str(f.stat().st_mtime_ns)}
                for f in root.rglob("*") if f.is_file()}
    fs = _fs(path)
    prefix = str(path)[len(SCHEME):].rstrip("/") + "/"
    found = fs.find(prefix, detail=True)
    return {name[len(prefix):]: {"size": int(info.get("size") or 0), "version": str(info.get("generation"))}
            for name, info in found.items() if name.startswith(prefix) and info.get("type") != "directory"}


def download(remote: PathLike, local: PathLike, names: Optional[list[str]] = None) -> None:
    """Copy a gs:// folder (or the given relative `names` below it) into a local folder."""
    fs = _fs(remote)
    names = sorted(list_files(remote)) if names is None else names
    for name in names:
        target = Path(local) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(join(remote, name), str(target))


def upload(local: PathLike, remote: PathLike, names: Optional[list[str]] = None) -> None:
    """Copy a local folder (or the given relative `names` below it) to gs://, in that order."""
    fs = _fs(remote)
    names = sorted(list_files(local)) if names is None else names
    for name in names:
        try:
            fs.put_file(str(Path(local) / name), join(remote, name))
        except FileNotFoundError as e:
            raise _missing_bucket(fs, remote, e) from None


# ---------------------------------------------------------------------------------------
# Inputs: a local cache
# ---------------------------------------------------------------------------------------


def localize(path: PathLike) -> str:
    """A local path holding the content of `path`: the path itself if local, else a copy of the
    gs:// file or folder in MSM_LOCAL_DIR/cache, keyed by the path and its objects' generations.
    Processes sharing a disk share the cache (each copy is renamed into place whole)."""
    if not is_remote(path):
        return str(path)
    text = str(path).rstrip("/")
    fs = _fs(text)
    try:
        info = fs.info(text)
    except FileNotFoundError:
        raise UserError(f"{text}: not found in Cloud Storage") from None
    if info.get("type") == "directory":
        files = list_files(text)
        if not files:
            raise UserError(f"{text}: not found in Cloud Storage")
        version = sorted((name, f["version"]) for name, f in files.items())
    else:
        files, version = None, str(info.get("generation"))
    key = hashlib.sha256(repr((text, version)).encode()).hexdigest()[:20]
    target = local_root() / "cache" / key / text.rsplit("/", 1)[-1]
    if target.exists():
        return str(target)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent.parent))
    try:
        if files is None:
            fs.get_file(text, str(tmp / target.name))
        else:
            download(text, tmp / target.name, sorted(files))
        try:
            os.rename(tmp, target.parent)
        except OSError:  # another process cached it first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


# ---------------------------------------------------------------------------------------
# Outputs: a local staging folder, uploaded on commit
# ---------------------------------------------------------------------------------------


def _is_leader() -> bool:
    """Process 0 of a multi-host job (or the only process) downloads and uploads outputs."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


class StagedOutput:
    """A local folder standing for output folder `target`. For a local target it is the target
    itself and `commit()` does nothing. For gs://, it is MSM_LOCAL_DIR/out/BUCKET/KEY: process 0
    creates it from the remote folder's files when it does not exist (so a command sees its
    earlier output, as it would locally), uploads on `commit()`, and keeps it (a crashed command
    resumes from it). Other processes of a multi-host job get the same path and upload nothing.
    `include(name)` limits the staged files (train: not Orbax's step folders)."""

    def __init__(self, target: PathLike, include: Callable[[str], bool] = lambda name: True):
        self.target = str(target).rstrip("/")
        self.include = include
        self.remote = is_remote(self.target)
        if not self.remote:
            self.path = Path(self.target)
            return
        makedirs(self.target)  # the bucket exists, or one line says it does not
        self.leader = _is_leader()
        self.path = local_root() / "out" / self.target[len(SCHEME):]
        if not self.leader:  # the same path on every process, as a local output folder would be
            return
        self._remote_files = {n for n in list_files(self.target) if self._staged(n)}
        if not self.path.exists():
            tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=_mkdirs(self.path.parent)))
            download(self.target, tmp, sorted(self._remote_files))
            os.rename(tmp, self.path)
        self._before = self._local_files()

    def _local_files(self) -> dict[str, tuple[int, int]]:
        return {n: (f["size"], int(f["version"])) for n, f in list_files(self.path).items() if self._staged(n)}

    def _staged(self, name: str) -> bool:
        return not RUNNER_FILE_PATTERN.fullmatch(name) and self.include(name)

    def commit(self) -> None:
        """Upload new and changed files in the order they were written, then remove the remote
        copies of files the command removed (only those: nothing else in the folder is touched)."""
        if not self.remote or not self.leader:
            return
        after = self._local_files()
        changed = [n for n in after if n not in self._remote_files or after[n] != self._before.get(n)]
        upload(self.path, self.target, sorted(changed, key=lambda n: (after[n][1], n)))
        gone = [n for n in self._before if n not in after and n in self._remote_files]
        if gone:
            filesystem().rm([join(self.target, n) for n in gone])
        self._remote_files |= set(after)
        self._before = after


def _mkdirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir(target: PathLike, include: Callable[[str], bool] = lambda name: True) -> StagedOutput:
    """Where a command writes output folder `target`; call `.commit()` once it succeeded."""
    return StagedOutput(target, include)
