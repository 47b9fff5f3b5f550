"""LoRA adapters out to Hugging Face: a PEFT adapter directory, or weights merged into the base.

`export_peft_adapter` writes adapter_config.json + adapter_model.safetensors with PEFT's key
names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A as [r, in] and B
as [out, r]), which `peft.PeftModel.from_pretrained` and vLLM's LoRA loader read on top of the
base model exported by `msm convert orbax-to-hf`. `merge_lora_checkpoint` folds the adapter
into the base weights on the mesh and writes a plain checkpoint that exports as a full model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from flax import nnx

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf import hosts
from msm_jax.hf.export_hf import CheckpointArrays
from msm_jax.hf.names import lora_target_name
from msm_jax.hf.safetensors_io import write_sharded
from msm_jax.outputs import atomic_write_text, claim_output_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_KIND = "peft-export"
GROUP_OF = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
            "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def _lora_meta(ckpt_dir, step: Optional[int]):
    step = checkpoint.latest_step(ckpt_dir) if step is None else step
    meta = checkpoint.read_meta(ckpt_dir, step)
    if not meta.get("lora"):
        raise UserError(f"{ckpt_dir} step {step}: not a LoRA checkpoint (its meta has no lora config); "
                        "export full weights with `msm convert orbax-to-hf`")
    cfg = checkpoint.model_config_from_meta(meta, f"{ckpt_dir}/{step}/meta")
    return step, cfg, checkpoint.lora_config_from_meta(meta, f"{ckpt_dir}/{step}/meta")


def adapter_config(cfg, lora_cfg, base_model: Optional[str]) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": lora_cfg.rank, "lora_alpha": lora_cfg.alpha, "lora_dropout": lora_cfg.dropout,
            "target_modules": sorted(lora_cfg.targets), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}


def _adapter_specs(cfg, lora_cfg, arrays: CheckpointArrays, np_dtype: np.dtype) -> list:
    """PEFT tensors, each read (one layer of A or B) from the checkpoint when written."""
    def producer(key, layer):
        return lambda: np.asarray(arrays.array(key)[layer].read().result()).T

    specs = []
    for name in lora_cfg.targets:
        group = GROUP_OF[name]
        key = f"layers.{group}.{name}.lora"
        in_dim, out_dim = arrays.array(f"{key}.a").shape[1], arrays.array(f"{key}.b").shape[2]
        for layer in range(cfg.num_layers):
            prefix = f"base_model.model.{lora_target_name((group, name), layer)}"
            specs.append((f"{prefix}.lora_A.weight", (lora_cfg.rank, in_dim), np_dtype, producer(f"{key}.a", layer)))
            specs.append((f"{prefix}.lora_B.weight", (out_dim, lora_cfg.rank), np_dtype, producer(f"{key}.b", layer)))
    return specs


def export_peft_adapter(ckpt_dir: str | Path, out_dir: str | Path, *, step: Optional[int] = None,
                        base_model: Optional[str] = None, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the LoRA adapter of a checkpoint (latest step by default) as a PEFT adapter dir.
    Call it on every process of a multi-host job: process 0 reads and writes, the others wait."""
    from msm_jax.models.decoder import DTYPES

    step, cfg, lora_cfg = _lora_meta(ckpt_dir, step)

    def write() -> None:
        out = claim_output_dir(out_dir, PEFT_KIND, overwrite=overwrite, option="output folder")
        arrays = CheckpointArrays(ckpt_dir, step, item="lora")
        specs = _adapter_specs(cfg, lora_cfg, arrays, np.dtype(DTYPES[dtype]))
        write_sharded(out.path, specs, max_shard_bytes=2**62, single_name=ADAPTER_WEIGHTS)
        atomic_write_text(out.path / ADAPTER_CONFIG, json.dumps(adapter_config(cfg, lora_cfg, base_model), indent=2) + "\n")
        out.wrote(ADAPTER_WEIGHTS, ADAPTER_CONFIG)
        out.finish()

    hosts.on_leader("peft-export", write)
    return Path(out_dir)


def merge_lora_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, *, step: Optional[int] = None,
                          mesh: Optional[jax.sharding.Mesh] = None) -> Path:
    """A plain params+meta checkpoint of the merged weights W + (alpha/r) A B (step 0).
    Base and adapter are restored sharded over `mesh` (default: every device of every
    process) and merged by one jitted function with the base's shardings: each device merges
    its own shard, no process or device ever holds the whole model."""
    from msm_jax.hf.export_hf import layer_chunks
    from msm_jax.models.lora import merge_lora_params
    from msm_jax.sharding import MeshConfig, make_mesh

    step, cfg, lora_cfg = _lora_meta(ckpt_dir, step)
    mesh = mesh or make_mesh(MeshConfig(), jax.devices())
    _, base, adapters = checkpoint.abstract_lora_model(cfg, lora_cfg, mesh)
    base_target, adapter_target = nnx.to_pure_dict(base), nnx.to_pure_dict(adapters)
    params = checkpoint.restore_params(ckpt_dir, base_target, step)
    lora = checkpoint.restore_lora(ckpt_dir, adapter_target, step)
    merge = jax.jit(functools.partial(merge_lora_params, scale=lora_cfg.scale), donate_argnums=0,
                    out_shardings=jax.tree.map(lambda t: t.sharding, base_target))
    merged = merge(params, lora)
    meta = checkpoint.make_meta(cfg, source=f"{Path(ckpt_dir).absolute()} step {step} (LoRA merged)")
    checkpoint.save_params(out_dir, merged, meta, save_args=layer_chunks(merged))
    return Path(out_dir)
