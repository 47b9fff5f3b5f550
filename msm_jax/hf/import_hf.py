"""Hugging Face directory -> msm-jax parameters (and an Orbax checkpoint).

Every parameter is built on its target sharding with `jax.make_array_from_callback`, and the
callback reads from the safetensors files only the layers and rows the device's shard covers:
on a multi-host mesh each process reads its own part of the model, never the whole of it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf import hosts
from msm_jax.hf.export_hf import layer_chunks
from msm_jax.hf.hf_config import model_config_from_hf, read_hf_config
from msm_jax.hf.names import TensorMap, tensor_maps
from msm_jax.hf.safetensors_io import SafetensorsReader
from msm_jax.models.build import abstract_model
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import DTYPES
from msm_jax.outputs import claim_output_dir, read_marker
from msm_jax.sharding import MeshConfig, make_mesh

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
IMPORT_KIND = "hf-import"


def hf_dtype(hf: dict) -> str:
    name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
    return name if name in DTYPES else "float32"


def config_from_hf_dir(hf_dir: str | Path, **options: Any) -> ModelConfig:
    """ModelConfig of an HF directory; params keep the checkpoint's dtype unless overridden."""
    hf = read_hf_config(hf_dir)
    dtype = hf_dtype(hf)
    options.setdefault("param_dtype", dtype)
    options.setdefault("compute_dtype", "float32" if dtype == "float32" else "bfloat16")
    return model_config_from_hf(hf, f"{Path(hf_dir) / 'config.json'}", **options)


def _check_tensors(tm: TensorMap, reader: SafetensorsReader, cfg: ModelConfig) -> None:
    for name in tm.hf_names:
        if name not in reader:
            raise UserError(f"{reader.dir}: tensor {name} is missing (needed for a {cfg.family} model "
                            f"with {cfg.num_layers} layers)")
        got = reader.shape(name)
        if got != tm.hf_shape:
            raise UserError(f"{reader.dir}: tensor {name} has shape {list(got)}, config.json implies "
                            f"{list(tm.hf_shape)}")


def read_block(tm: TensorMap, reader: SafetensorsReader, cfg: ModelConfig, shape: tuple[int, ...],
               dtype: np.dtype, index: tuple[slice, ...]) -> np.ndarray:
    """The block `index` of the msm-jax parameter `tm` (global `shape`), read from the HF files:
    only its layers, and of each HF tensor only the rows the block covers."""
    bounds = [s.indices(n)[:2] for s, n in zip(index, shape)]
    out = np.zeros(tuple(b - a for a, b in bounds), dtype)
    layers = range(*bounds[0]) if tm.stacked else [0]
    inner = bounds[1:] if tm.stacked else bounds
    if tm.vocab_axis is not None:  # padded vocab rows past vocab_size stay zero
        a, b = inner[tm.vocab_axis]
        inner[tm.vocab_axis] = (a, max(a, min(b, cfg.vocab_size)))
        if inner[tm.vocab_axis][1] == a:
            return out
    hf_index = tuple(slice(a, b) for a, b in (inner[::-1] if tm.transpose else inner))
    fill = tuple(slice(0, b - a) for a, b in inner)
    for j, layer in enumerate(layers):
        t = reader.get(tm.hf_names[layer], hf_index)
        (out[j] if tm.stacked else out)[fill] = t.T if tm.transpose else t
    return out


def load_hf_params(hf_dir: str | Path, cfg: ModelConfig, mesh: Optional[jax.sharding.Mesh] = None) -> dict:
    """The pure params tree of `hf_dir`, each array built on its shardings of `mesh`: every
    process reads from the safetensors files only the blocks its own devices hold."""
    mesh = mesh or make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, abstract = abstract_model(cfg, mesh)
    targets = nnx.to_pure_dict(abstract)
    reader = SafetensorsReader(hf_dir)
    maps = list(tensor_maps(cfg))
    for tm in maps:
        _check_tensors(tm, reader, cfg)
    params: dict = {}
    for tm in maps:
        node = targets
        for part in tm.path:
            node = node[part]
        shape, dtype = node.shape, np.dtype(node.dtype)
        placed = jax.make_array_from_callback(
            shape, node.sharding, lambda idx, tm=tm, shape=shape, dtype=dtype: read_block(tm, reader, cfg, shape,
                                                                                        dtype, idx), dtype=dtype)
        dst = params
        for part in tm.path[:-1]:
            dst = dst.setdefault(part, {})
        dst[tm.path[-1]] = placed
    used = {n for tm in maps for n in tm.hf_names}
    extra = [n for n in reader.names() if n not in used and not n.endswith(IGNORED_SUFFIXES)
             and not (cfg.tie_embeddings and n == "lm_head.weight")]
    if extra:
        log.warning("%s: %d tensors not used by a %s model, e.g. %s", hf_dir, len(extra), cfg.family, extra[:3])
    return params


def _existing_steps(ckpt_dir: str | Path) -> list[str]:
    path = checkpoint._path(ckpt_dir)
    return sorted(p.name for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def _check_target(ckpt_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, a folder that already holds a checkpoint: an import never
    leaves old weights in place under a message that says it imported new ones."""
    steps = _existing_steps(ckpt_dir)
    if steps and not overwrite:
        raise UserError(f"{ckpt_dir}: already holds a checkpoint (step {steps[0]}); pass --overwrite to "
                        f"replace it with this import, or choose a new folder")
    if not steps:
        return
    marker = None if checkpoint.is_remote(ckpt_dir) else read_marker(ckpt_dir)
    ours = set(marker.get("files", [])) if marker and marker.get("kind") == IMPORT_KIND else set()
    foreign = [s for s in steps if s not in ours]
    if foreign:
        raise UserError(f"{ckpt_dir}: step {foreign[0]} was not written by `msm convert hf-to-orbax` and "
                        f"--overwrite never deletes what msm did not write; choose a new folder")


def _claim(ckpt_dir: str | Path, overwrite: bool):
    """Claim the (local) checkpoint folder and remove the steps our previous import wrote."""
    if checkpoint.is_remote(ckpt_dir):
        return None
    out = claim_output_dir(ckpt_dir, IMPORT_KIND, overwrite=overwrite, option="checkpoint folder")
    for name in out.previous:
        if name.isdigit() and (out.path / name).is_dir():
            shutil.rmtree(out.path / name)
    return out


def hf_to_orbax(hf_dir: str | Path, ckpt_dir: str | Path, *, overwrite: bool = False,
                mesh: Optional[jax.sharding.Mesh] = None, **options: Any) -> ModelConfig:
    """Import `hf_dir` into an Orbax checkpoint (step 0) at `ckpt_dir`, sharded over `mesh`
    (default: every device of every process)."""
    cfg = config_from_hf_dir(hf_dir, **options)
    _check_target(ckpt_dir, overwrite)
    mesh = mesh or make_mesh(MeshConfig(), jax.devices())
    params = load_hf_params(hf_dir, cfg, mesh)  # bad input fails here, before the folder is touched
    out = hosts.on_leader("import", lambda: _claim(ckpt_dir, overwrite))
    checkpoint.save_params(ckpt_dir, params, checkpoint.make_meta(cfg, source=str(Path(hf_dir).absolute())),
                           save_args=layer_chunks(params))
    if out is not None:
        out.wrote("0")
        out.finish()
    return cfg


def load_hf_model(hf_dir: str | Path, mesh: Optional[jax.sharding.Mesh] = None, **options: Any):
    """A Decoder built from an HF directory (used to start a training stage from HF)."""
    cfg = config_from_hf_dir(hf_dir, **options)
    mesh = mesh or make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    graphdef, abstract = abstract_model(cfg, mesh)
    nnx.replace_by_pure_dict(abstract, load_hf_params(hf_dir, cfg, mesh))
    return nnx.merge(graphdef, abstract)
