"""Orbax checkpoint -> Hugging Face directory, streaming.

Each HF tensor is read from the checkpoint through tensorstore (one layer's slice of a
stacked parameter at a time) and written straight into its safetensors shard, so host
memory stays bounded by the largest single tensor, not by the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import tensorstore as ts

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf.hf_config import generation_config, hf_config_from_model
from msm_jax.hf.names import tensor_maps
from msm_jax.hf.safetensors_io import write_sharded
from msm_jax.models.decoder import DTYPES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


class CheckpointArrays:
    """Lazy access to the arrays of a checkpoint's `params` item through tensorstore."""

    def __init__(self, ckpt_dir: str | Path, step: int):
        base = str(ckpt_dir).rstrip("/") + f"/{step}/params"
        if not checkpoint.is_remote(base):
            base = "file://" + str(Path(base).absolute())
        self.base = base
        self._open: dict[str, ts.TensorStore] = {}

    def array(self, key: str) -> ts.TensorStore:
        if key not in self._open:
            errors = []
            for driver in ("zarr", "zarr3"):
                try:
                    self._open[key] = ts.open({"driver": driver, "kvstore": {"driver": "ocdbt", "base": self.base,
                                                                             "path": key}}, open=True).result()
                    break
                except ValueError as e:
                    errors.append(str(e))
            else:
                raise UserError(f"{self.base}: parameter {key} missing or unreadable ({errors[-1][:200]})")
        return self._open[key]

    def has(self, key: str) -> bool:
        try:
            self.array(key)
            return True
        except UserError:
            return False


def orbax_to_hf(ckpt_dir: str | Path, hf_dir: str | Path, *, step: Optional[int] = None,
                dtype: Optional[str] = None, tokenizer_dir: Optional[str | Path] = None,
                max_shard_bytes: int = 5 * 2**30, merge_lora: bool = True) -> Path:
    """Export a checkpoint (latest step by default) as a transformers/vLLM model directory.
    A LoRA checkpoint exports merged weights, or its frozen base with `merge_lora=False`."""
    step = checkpoint.latest_step(ckpt_dir) if step is None else step
    meta = checkpoint.read_meta(ckpt_dir, step)
    if meta.get("lora") and merge_lora:
        return _export_merged_lora(ckpt_dir, hf_dir, step, dtype, tokenizer_dir, max_shard_bytes)
    ckpt_dir, step = checkpoint.lora_base(ckpt_dir, step, meta)  # a LoRA run's frozen base lives there
    cfg = checkpoint.model_config_from_meta(meta, f"{ckpt_dir}/{step}/meta")
    dtype = dtype or cfg.param_dtype
    np_dtype = np.dtype(DTYPES[dtype])
    arrays = CheckpointArrays(ckpt_dir, step)
    current: dict[str, np.ndarray] = {}  # the one parameter being exported (stacked arrays are
    # stored as a single chunk, so reading it once beats decoding it again for every layer)

    def producer(tm, layer):
        def produce():
            if tm.key not in current:
                current.clear()
                current[tm.key] = np.asarray(arrays.array(tm.key).read().result())
            arr = current[tm.key][layer] if tm.stacked else current[tm.key]
            if tm.vocab_axis is not None:
                arr = arr[: cfg.vocab_size] if tm.vocab_axis == 0 else arr[:, : cfg.vocab_size]
            return arr.T if tm.transpose else arr
        return produce

    specs = []
    for tm in tensor_maps(cfg):
        for layer, name in enumerate(tm.hf_names):
            specs.append((name, tm.hf_shape, np_dtype, producer(tm, layer)))
    out = Path(hf_dir)
    write_sharded(out, specs, max_shard_bytes)
    (out / "config.json").write_text(json.dumps(hf_config_from_model(cfg, dtype), indent=2))
    (out / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2))
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out


def _export_merged_lora(ckpt_dir, hf_dir, step, dtype, tokenizer_dir, max_shard_bytes) -> Path:
    """A LoRA run's `params` item is the frozen base: fold the adapter in first (next to the
    output, since the merged model is as large as the base), then export that."""
    from msm_jax.hf.peft import merge_lora_checkpoint

    merged = Path(hf_dir).absolute().parent / (Path(hf_dir).name + ".merged-ckpt")
    shutil.rmtree(merged, ignore_errors=True)
    try:
        merge_lora_checkpoint(ckpt_dir, merged, step=step)
        return orbax_to_hf(merged, hf_dir, dtype=dtype, tokenizer_dir=tokenizer_dir, max_shard_bytes=max_shard_bytes)
    finally:
        shutil.rmtree(merged, ignore_errors=True)


def copy_tokenizer(tokenizer_dir: str | Path, out: Path) -> None:
    src = Path(tokenizer_dir)
    found = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not found:
        raise UserError(f"{src}: no tokenizer files found (expected one of {', '.join(TOKENIZER_FILES)})")
    for name in found:
        shutil.copyfile(src / name, out / name)
