"""Hugging Face directory -> msm-jax parameters (and an Orbax checkpoint).

Tensors stream from memory-mapped safetensors straight onto their target shards: host
memory holds one (layer-stacked) parameter at a time on accelerator hosts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf.hf_config import model_config_from_hf, read_hf_config
from msm_jax.hf.names import TensorMap, tensor_maps
from msm_jax.hf.safetensors_io import SafetensorsReader
from msm_jax.models.build import abstract_model
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import DTYPES
from msm_jax.sharding import MeshConfig, make_mesh

log = logging.getLogger(__name__)

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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


def _assemble(tm: TensorMap, reader: SafetensorsReader, cfg: ModelConfig, shape: tuple[int, ...],
              dtype: np.dtype) -> np.ndarray:
    out = np.zeros(shape, dtype)
    for i, name in enumerate(tm.hf_names):
        if name not in reader:
            raise UserError(f"{reader.dir}: tensor {name} is missing (needed for a {cfg.family} model "
                            f"with {cfg.num_layers} layers)")
        got = reader.shape(name)
        if got != tm.hf_shape:
            raise UserError(f"{reader.dir}: tensor {name} has shape {list(got)}, config.json implies "
                            f"{list(tm.hf_shape)}")
        t = reader.get(name)
        if tm.transpose:
            t = t.T
        target = out[i] if tm.stacked else out
        if tm.vocab_axis is None:
            target[...] = t
        elif tm.vocab_axis == 0:
            target[: cfg.vocab_size] = t
        else:
            target[:, : cfg.vocab_size] = t
    return out


def load_hf_params(hf_dir: str | Path, cfg: ModelConfig, mesh: Optional[jax.sharding.Mesh] = None) -> dict:
    """The pure params tree of `hf_dir`, each array placed on its shard of `mesh`."""
    mesh = mesh or make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, abstract = abstract_model(cfg, mesh)
    targets = nnx.to_pure_dict(abstract)
    reader = SafetensorsReader(hf_dir)
    params: dict = {}
    used: set[str] = set()
    try:
        for tm in tensor_maps(cfg):
            node = targets
            for part in tm.path:
                node = node[part]
            arr = _assemble(tm, reader, cfg, node.shape, np.dtype(node.dtype))
            placed = jax.make_array_from_callback(node.shape, node.sharding, lambda idx, a=arr: a[idx], dtype=arr.dtype)
            del arr
            dst = params
            for part in tm.path[:-1]:
                dst = dst.setdefault(part, {})
            dst[tm.path[-1]] = placed
            used.update(tm.hf_names)
    finally:
        reader.close()
    extra = [n for n in reader.names() if n not in used and not n.endswith(IGNORED_SUFFIXES)
             and not (cfg.tie_embeddings and n == "lm_head.weight")]
    if extra:
        log.warning("%s: %d tensors not used by a %s model, e.g. %s", hf_dir, len(extra), cfg.family, extra[:3])
    return params


def hf_to_orbax(hf_dir: str | Path, ckpt_dir: str | Path, **options: Any) -> ModelConfig:
    """Import `hf_dir` into an Orbax checkpoint (step 0) at `ckpt_dir`."""
    cfg = config_from_hf_dir(hf_dir, **options)
    # every device of every process holds a shard: Orbax saves on several hosts only what each holds
    params = load_hf_params(hf_dir, cfg, make_mesh(MeshConfig()))
    checkpoint.save_params(ckpt_dir, params, checkpoint.make_meta(cfg, source=str(Path(hf_dir).absolute())))
    return cfg


def load_hf_model(hf_dir: str | Path, mesh: Optional[jax.sharding.Mesh] = None, **options: Any):
    """A Decoder built from an HF directory (used to start a training stage from HF)."""
    cfg = config_from_hf_dir(hf_dir, **options)
    mesh = mesh or make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    graphdef, abstract = abstract_model(cfg, mesh)
    nnx.replace_by_pure_dict(abstract, load_hf_params(hf_dir, cfg, mesh))
    return nnx.merge(graphdef, abstract)
