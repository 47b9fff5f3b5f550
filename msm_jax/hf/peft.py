"""LoRA adapters out to Hugging Face: a PEFT adapter directory, or weights merged into the base.

`export_peft_adapter` writes adapter_config.json + adapter_model.safetensors with PEFT's key
names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A as [r, in] and B
as [out, r]), which `peft.PeftModel.from_pretrained` and vLLM's LoRA loader read on top of the
base model exported by `msm convert orbax-to-hf`. `merge_lora_checkpoint` folds the adapter
into the base weights and writes a plain checkpoint that exports as a full model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from msm_jax import checkpoint
from msm_jax.errors import UserError
from msm_jax.hf.names import lora_target_name
from msm_jax.hf.safetensors_io import SINGLE_NAME, write_sharded

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
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


def read_adapters(ckpt_dir, step: Optional[int] = None) -> tuple[dict, object, object]:
    """(adapter tree of host numpy arrays, ModelConfig, LoRAConfig); adapters are small."""
    import jax
    from flax import nnx

    from msm_jax.sharding import MeshConfig, make_mesh

    step, cfg, lora_cfg = _lora_meta(ckpt_dir, step)
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    _, _, adapters = checkpoint.abstract_lora_model(cfg, lora_cfg, mesh)
    tree = checkpoint.restore_lora(ckpt_dir, nnx.to_pure_dict(adapters), step)
    return jax.tree.map(np.asarray, tree), cfg, lora_cfg


def adapter_config(cfg, lora_cfg, base_model: Optional[str]) -> dict:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": lora_cfg.rank, "lora_alpha": lora_cfg.alpha, "lora_dropout": lora_cfg.dropout,
            "target_modules": sorted(lora_cfg.targets), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None}


def export_peft_adapter(ckpt_dir: str | Path, out_dir: str | Path, *, step: Optional[int] = None,
                        base_model: Optional[str] = None, dtype: str = "float32") -> Path:
    """Write the LoRA adapter of a checkpoint (latest step by default) as a PEFT adapter dir."""
    from msm_jax.models.decoder import DTYPES

    tree, cfg, lora_cfg = read_adapters(ckpt_dir, step)
    np_dtype = np.dtype(DTYPES[dtype])
    specs = []
    for name in lora_cfg.targets:
        group = GROUP_OF[name]
        adapter = tree["layers"][group][name]["lora"]
        a, b = adapter["a"], adapter["b"]
        for layer in range(cfg.num_layers):
            prefix = f"base_model.model.{lora_target_name((group, name), layer)}"
            specs.append((f"{prefix}.lora_A.weight", (lora_cfg.rank, a.shape[1]), np_dtype,
                          lambda a=a, i=layer: a[i].T))
            specs.append((f"{prefix}.lora_B.weight", (b.shape[2], lora_cfg.rank), np_dtype,
                          lambda b=b, i=layer: b[i].T))
    out = Path(out_dir)
    write_sharded(out, specs, max_shard_bytes=2**62)
    (out / SINGLE_NAME).replace(out / ADAPTER_WEIGHTS)
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(cfg, lora_cfg, base_model), indent=2) + "\n")
    return out


def merge_lora_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, *, step: Optional[int] = None) -> Path:
    """A plain params+meta checkpoint of the merged weights W + (alpha/r) A B (step 0)."""
    step = checkpoint.latest_step(ckpt_dir) if step is None else step
    model, _ = checkpoint.load_model(ckpt_dir, step=step)  # load_model merges LoRA checkpoints
    merged_meta = checkpoint.make_meta(model.cfg, source=f"{Path(ckpt_dir).absolute()} step {step} (LoRA merged)")
    checkpoint.save_params(out_dir, checkpoint.params_of(model), merged_meta)
    return Path(out_dir)
