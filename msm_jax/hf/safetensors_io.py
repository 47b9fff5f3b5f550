"""Streaming safetensors: read one tensor at a time, write shards tensor by tensor.

The `safetensors` package writes a whole shard from an in-memory dict; this writer knows
every tensor's shape up front (from the config), writes the header first and then each
tensor as it is produced, so host memory holds one tensor at a time.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from msm_jax.errors import UserError

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

    def get(self, name: str) -> np.ndarray:
        """The tensor, read into a fresh array (a plain read, not a memory map, so that pages
        of tensors already converted do not stay resident)."""
        if name not in self._entries:
            raise UserError(f"{self.dir}: tensor {name} is missing")
        path, info, base = self._entries[name]
        start, end = info["data_offsets"]
        out = np.empty(info["shape"], DTYPES[info["dtype"]])
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(out.reshape(-1).view(np.uint8)) != end - start:
                raise UserError(f"{path}: truncated safetensors file while reading {name}")
        return out

    def close(self) -> None:
        """Nothing stays open between reads; kept so callers can use try/finally uniformly."""


TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def write_sharded(out_dir: str | Path, tensors: Iterable[TensorSpec], max_shard_bytes: int = 5 * 2**30,
                  metadata: dict | None = None) -> list[Path]:
    """Write tensors (name, shape, dtype, producer) into safetensors shards plus an index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = list(tensors)
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = math.prod(spec[1]) * np.dtype(spec[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
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
        tmp = out_dir / (fname + ".tmp")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, shape, dtype, produce in shard:
                arr = np.ascontiguousarray(produce(), dtype=dtype)
                if arr.shape != tuple(shape):
                    raise ValueError(f"tensor {name}: produced shape {arr.shape}, planned {tuple(shape)}")
                arr.reshape(-1).view(np.uint8).tofile(f)  # no intermediate bytes copy
                del arr
        tmp.replace(out_dir / fname)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return [out_dir / n for n in names]
