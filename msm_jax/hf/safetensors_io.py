"""Streaming safetensors: read one tensor at a time, write shards tensor by tensor.

The `safetensors` package writes a whole shard from an in-memory dict; this writer knows
every tensor's shape up front (from the config), writes the header first and then each
tensor as it is produced, so host memory holds one tensor at a time.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from msm_jax.errors import UserError
from msm_jax.outputs import atomic_open, atomic_write_text

DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
          "F64": np.dtype(np.float64), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
          "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_)}
CODES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class SafetensorsReader:
    """All tensors of an HF directory (single file or sharded with an index)."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        self._entries: dict[str, tuple[Path, dict, int]] = {}
        for path in self._files():
            self._read_header(path)

    def _files(self) -> list[Path]:
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{index}: invalid index ({e})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.dir / f).is_file()]
            if missing:
                raise UserError(f"{index}: lists shard {missing[0]} which does not exist in {self.dir}")
            return [self.dir / f for f in files]
        single = self.dir / SINGLE_NAME
        if single.is_file():
            return [single]
        raise UserError(f"{self.dir}: no {SINGLE_NAME} or {INDEX_NAME} found")

    def _read_header(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UserError(f"{path}: truncated safetensors file (no header)")
            (hlen,) = struct.unpack("<Q", raw)
            if hlen > size - 8:
                raise UserError(f"{path}: truncated safetensors file (header says {hlen} bytes)")
            try:
                header = json.loads(f.read(hlen))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{path}: corrupt safetensors header ({e})") from None
        base = 8 + hlen
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            if base + end > size:
                raise UserError(f"{path}: truncated safetensors file: tensor {name} ends at byte "
                                f"{base + end}, file has {size}")
            if info["dtype"] not in DTYPES:
                raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            self._entries[name] = (path, info, base)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][1]["shape"])

    def get(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
        """The tensor, or its block `index` (slices, one per leading axis), read into a fresh
        array. Only the block's bytes come off disk: a run of whole rows in one read, a column
        range one row at a time (plain reads, not a memory map, so pages of tensors already
        converted do not stay resident)."""
        if name not in self._entries:
            raise UserError(f"{self.dir}: tensor {name} is missing")
        path, info, base = self._entries[name]
        shape, dtype = tuple(info["shape"]), DTYPES[info["dtype"]]
        bounds = [s.indices(n)[:2] for s, n in zip(index, shape)] + [(0, n) for n in shape[len(index):]]
        offset = base + info["data_offsets"][0]
        with open(path, "rb") as f:
            if len(shape) == 2 and bounds[1] != (0, shape[1]):
                out = self._read_columns(f, offset, shape, dtype, bounds)
            else:
                (r0, r1) = bounds[0] if shape else (0, 1)
                row_bytes = math.prod(shape[1:]) * dtype.itemsize
                out = np.empty((r1 - r0,) + shape[1:] if shape else (), dtype)
                f.seek(offset + r0 * row_bytes)
                if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
                    raise UserError(f"{path}: truncated safetensors file while reading {name}")
                out = out[(slice(None),) + tuple(slice(a, b) for a, b in bounds[1:])] if len(shape) > 1 else out
        return out

    @staticmethod
    def _read_columns(f, offset: int, shape: tuple[int, ...], dtype: np.dtype, bounds) -> np.ndarray:
        (r0, r1), (c0, c1) = bounds
        out = np.empty((r1 - r0, c1 - c0), dtype)
        raw = out.view(np.uint8)
        row_bytes, fd = shape[1] * dtype.itemsize, f.fileno()
        for i in range(r1 - r0):
            if os.preadv(fd, [raw[i]], offset + (r0 + i) * row_bytes + c0 * dtype.itemsize) != raw.shape[1]:
                raise UserError(f"{f.name}: truncated safetensors file")
        return out

    def close(self) -> None:
        """Nothing stays open between reads; kept so callers can use try/finally uniformly."""


TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def plan_shards(tensors: list[TensorSpec], max_shard_bytes: int,
                single_name: str = SINGLE_NAME) -> list[tuple[str, list[TensorSpec]]]:
    """(file name, its tensors) for each shard: tensors in order, a new shard when the next
    tensor would pass `max_shard_bytes`."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in tensors:
        nbytes = math.prod(spec[1]) * np.dtype(spec[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    names = ([single_name] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    return list(zip(names, shards))


def write_sharded(out_dir: str | Path, tensors: Iterable[TensorSpec], max_shard_bytes: int = 5 * 2**30,
                  metadata: dict | None = None, single_name: str = SINGLE_NAME) -> list[Path]:
    """Write tensors (name, shape, dtype, producer) into safetensors shards plus an index, each
    file under a temporary name renamed into place when complete; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(list(tensors), max_shard_bytes, single_name)
    weight_map, total = {}, 0
    for fname, shard in shards:
        header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for name, shape, dtype, _ in shard:
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            header[name] = {"dtype": CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        total += offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
        with atomic_open(out_dir / fname, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype, produce in shard:
                arr = np.ascontiguousarray(produce(), dtype=dtype)
                if arr.shape != tuple(shape):
                    raise ValueError(f"tensor {name}: produced shape {arr.shape}, planned {tuple(shape)}")
                f.write(arr.reshape(-1).view(np.uint8).data)  # no intermediate bytes copy
                del arr
    written = [out_dir / name for name, _ in shards]
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out_dir / INDEX_NAME, json.dumps(index, indent=2))
        written.append(out_dir / INDEX_NAME)
    return written
