"""Orbax checkpoint -> Hugging Face directory, streaming.

Each HF tensor is read from the checkpoint through tensorstore (one layer's slice of a
stacked parameter at a time) and written straight into its safetensors shard, so host
memory stays bounded by the largest single tensor, not by the model, when each layer is
stored as its own chunks (`layer_chunks`: imports and merges are saved that way).
Files are written once, by process 0, into a claimed output folder (`msm_jax.outputs`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import tensorstore as ts

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf import hosts
from msm_jax.hf.hf_config import generation_config, hf_config_from_model
from msm_jax.hf.names import tensor_maps
from msm_jax.hf.safetensors_io import INDEX_NAME, plan_shards, write_sharded
from msm_jax.models.decoder import DTYPES
from msm_jax.outputs import atomic_open, atomic_write_text, claim_output_dir

EXPORT_KIND = "hf-export"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja")


class CheckpointArrays:
    """Lazy access to the arrays of one item of a checkpoint (`params`, `lora`) through tensorstore."""

    def __init__(self, ckpt_dir: str | Path, step: int, item: str = "params"):
        base = str(ckpt_dir).rstrip("/") + f"/{step}/{item}"
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


def layer_chunks(params: dict) -> dict:
    """Orbax save args storing every layer of a stacked parameter as its own chunks, so that
    the exporter reads one layer without decoding the others."""
    import orbax.checkpoint as ocp

    return {k: (jax.tree.map(lambda _: ocp.SaveArgs(shard_axes=(0,)), v) if k == "layers"
                else jax.tree.map(lambda _: ocp.SaveArgs(), v)) for k, v in params.items()}


def _weight_specs(cfg, arrays: CheckpointArrays, np_dtype: np.dtype) -> list:
    """(HF name, shape, dtype, producer) of every tensor. A stacked parameter is read in runs
    of layers that match its storage chunks: one layer at a time when each layer is its own
    chunk (imports, merges), otherwise each chunk's layers once (training checkpoints store a
    device's shard of all layers as one chunk), so nothing is decoded twice."""
    block: dict = {}  # the run of layers read last: (key, first layer, array)

    def layer_of(tm, layer):
        store = arrays.array(tm.key)
        if block.get("key") != tm.key or not block["first"] <= layer < block["first"] + len(block["array"]):
            run = store.chunk_layout.read_chunk.shape[0] or 1
            first = layer - layer % run
            block.update(key=tm.key, first=first, array=np.asarray(store[first:first + run].read().result()))
        return block["array"][layer - block["first"]]

    def producer(tm, layer):
        def produce():
            arr = layer_of(tm, layer) if tm.stacked else np.asarray(arrays.array(tm.key).read().result())
            if tm.vocab_axis is not None:
                arr = arr[: cfg.vocab_size] if tm.vocab_axis == 0 else arr[:, : cfg.vocab_size]
            return arr.T if tm.transpose else arr
        return produce

    return [(name, tm.hf_shape, np_dtype, producer(tm, layer))
            for tm in tensor_maps(cfg) for layer, name in enumerate(tm.hf_names)]


def _refuse_shadowing(out, planned: list[str]) -> None:
    """Weights files we did not write would be loaded by transformers instead of (or mixed
    with) the new ones, and we never delete them: refuse before writing anything."""
    ours = set(out.previous) | set(planned)
    for p in sorted(out.path.iterdir()):
        if p.name not in ours and (p.name.endswith((".safetensors", ".bin", ".pt", ".pth"))
                                   or p.name.endswith(".index.json")):
            raise UserError(f"{p}: a weights file not written by msm; transformers would load it instead of "
                            f"the new export. Move it away or choose another output folder")


def orbax_to_hf(ckpt_dir: str | Path, hf_dir: str | Path, *, step: Optional[int] = None,
                dtype: Optional[str] = None, tokenizer_dir: Optional[str | Path] = None,
                max_shard_bytes: int = 5 * 2**30, merge_lora: bool = True, overwrite: bool = False) -> Path:
    """Export a checkpoint (latest step by default) as a transformers/vLLM model directory.
    A LoRA checkpoint exports merged weights, or its frozen base with `merge_lora=False`.
    Call it on every process of a multi-host job: process 0 writes, the others wait."""
    step = checkpoint.latest_step(ckpt_dir) if step is None else step
    meta = checkpoint.read_meta(ckpt_dir, step)
    if meta.get("lora") and merge_lora:
        return _export_merged_lora(ckpt_dir, hf_dir, step, dtype, tokenizer_dir, max_shard_bytes, overwrite)
    cfg = checkpoint.model_config_from_meta(meta, f"{ckpt_dir}/{step}/meta")
    dtype = dtype or cfg.param_dtype
    if tokenizer_dir is not None:
        tokenizer_files(tokenizer_dir)

    def write() -> Path:
        out = claim_output_dir(hf_dir, EXPORT_KIND, overwrite=overwrite, option="output folder")
        specs = _weight_specs(cfg, CheckpointArrays(ckpt_dir, step), np.dtype(DTYPES[dtype]))
        shards = plan_shards(specs, max_shard_bytes)
        _refuse_shadowing(out, [name for name, _ in shards] + [INDEX_NAME])
        out.wrote(*(p.name for p in write_sharded(out.path, specs, max_shard_bytes)))
        atomic_write_text(out.path / "config.json", json.dumps(hf_config_from_model(cfg, dtype), indent=2))
        atomic_write_text(out.path / "generation_config.json", json.dumps(generation_config(cfg), indent=2))
        out.wrote("config.json", "generation_config.json")
        if tokenizer_dir is not None:
            out.wrote(*copy_tokenizer(tokenizer_dir, out.path))
        out.finish()
        return out.path

    hosts.on_leader("export", write)
    return Path(hf_dir)


def _export_merged_lora(ckpt_dir, hf_dir, step, dtype, tokenizer_dir, max_shard_bytes, overwrite) -> Path:
    """A LoRA run's `params` item is the frozen base: fold the adapter in on the mesh first,
    into a checkpoint next to the output (the merged model is as large as the base), then
    export that through the same bounded path."""
    from msm_jax.hf.peft import merge_lora_checkpoint

    merged = Path(hf_dir).absolute().parent / (Path(hf_dir).name + ".merged-ckpt")
    hosts.on_leader("merge-clean", lambda: shutil.rmtree(merged, ignore_errors=True))
    try:
        merge_lora_checkpoint(ckpt_dir, merged, step=step)
        return orbax_to_hf(merged, hf_dir, dtype=dtype, tokenizer_dir=tokenizer_dir,
                           max_shard_bytes=max_shard_bytes, overwrite=overwrite)
    finally:
        hosts.barrier("merged-export-done")
        if hosts.is_leader():
            shutil.rmtree(merged, ignore_errors=True)


def tokenizer_files(tokenizer_dir: str | Path) -> list[Path]:
    src = Path(tokenizer_dir)
    found = [src / f for f in TOKENIZER_FILES if (src / f).is_file()]
    if not found:
        raise UserError(f"{src}: no tokenizer files found (expected one of {', '.join(TOKENIZER_FILES)})")
    return found


def copy_tokenizer(tokenizer_dir: str | Path, out: Path) -> list[str]:
    """Copy the tokenizer files (each atomically); returns their names."""
    names = []
    for path in tokenizer_files(tokenizer_dir):
        with open(path, "rb") as src, atomic_open(out / path.name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        names.append(path.name)
    return names
