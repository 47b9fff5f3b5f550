"""Where a stage's weights come from: random init, a Hugging Face directory, or another
stage's checkpoint (its full weights, or its LoRA adapter continued or merged), and, for a
LoRA run, which checkpoint already holds its frozen base (so the run need not save one)."""

from __future__ import annotations

from typing import Optional

from msm_jax import checkpoint
from msm_jax.config import to_dict
from msm_jax.errors import UserError
from msm_jax.models.config import ModelConfig
from msm_jax.train.config import RunConfig

from msm_jax.checkpoint import EXECUTION_FIELDS, LORA_IDENTITY
# Fields that decide the weights' shapes: a configured model must agree with the source on these.
SHAPE_FIELDS = ("family", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "resolved_head_dim", "tie_embeddings", "qkv_bias", "qk_norm")


def _execution_options(cfg: RunConfig) -> dict:
    return {} if cfg.model is None else {k: getattr(cfg.model, k) for k in EXECUTION_FIELDS}


def _check_same_architecture(configured: Optional[ModelConfig], source: ModelConfig, where: str) -> None:
    if configured is None:
        return
    for name in SHAPE_FIELDS:
        a, b = getattr(configured, name), getattr(source, name)
        if a != b:
            raise UserError(f"model.{name} is {a!r} in the config but {b!r} in {where}; "
                            "drop the model section (it is read from the source) or make them agree")


def resolve_model_config(cfg: RunConfig) -> ModelConfig:
    """The architecture comes from the init source when there is one; the config's model
    section then only sets execution options (dtypes, scan, remat, attention kernel) and
    must agree with the source on every field that shapes the weights."""
    options = _execution_options(cfg)
    if cfg.init.from_hf:
        from msm_jax.hf.import_hf import config_from_hf_dir
        source = config_from_hf_dir(cfg.init.from_hf, **options)
        _check_same_architecture(cfg.model, source, cfg.init.from_hf)
        return source
    if cfg.init.from_checkpoint:
        meta = checkpoint.read_meta(cfg.init.from_checkpoint, cfg.init.checkpoint_step)
        source_dict = dict(meta["model"], **options)
        source = checkpoint.model_config_from_meta({"model": source_dict}, f"{cfg.init.from_checkpoint} meta")
        _check_same_architecture(cfg.model, source, cfg.init.from_checkpoint)
        return source
    return cfg.model


Base = Optional[tuple[str, int]]  # (checkpoint directory, step) whose `params` item is the frozen base


def initial_weights(cfg: RunConfig, spec) -> tuple[dict, dict, Base]:
    """(trainable, frozen) pure trees on their shards, per `cfg.init`, and for a LoRA run the
    checkpoint that holds `frozen` when there is one (None: the run must save its base)."""
    import jax

    trainable, frozen, base = _initial_weights(cfg, spec)
    return (jax.device_put(trainable, spec.trainable_shardings()),
            jax.device_put(frozen, spec.frozen_shardings()), base)


def _initial_weights(cfg: RunConfig, spec) -> tuple[dict, dict, Base]:
    from msm_jax.train.state import fresh_adapters, random_params

    base = None
    if cfg.init.from_hf:
        from msm_jax.hf.import_hf import load_hf_params
        weights = load_hf_params(cfg.init.from_hf, spec.model_cfg, spec.mesh)
    elif cfg.init.from_checkpoint:
        weights, adapters, base = _checkpoint_weights(cfg, spec)
        if adapters is not None:
            return adapters, weights, base
    else:
        return (*random_params(spec, cfg.train.seed), None)
    if spec.lora_cfg is None:
        return weights, {}, None
    return fresh_adapters(spec, cfg.train.seed), weights, base


def _checkpoint_weights(cfg: RunConfig, spec) -> tuple[dict, Optional[dict], Base]:
    """(base params, adapters to continue or None, where the base params are saved or None)
    from another stage's checkpoint."""
    from flax import nnx

    directory = cfg.init.from_checkpoint
    step = checkpoint.latest_step(directory) if cfg.init.checkpoint_step is None else cfg.init.checkpoint_step
    meta = checkpoint.read_meta(directory, step)
    if not meta.get("lora"):
        target = nnx.to_pure_dict(spec.abstract_trainable if spec.lora_cfg is None else spec.abstract_frozen)
        return checkpoint.restore_params(directory, target, step), None, _saved_base(directory, step, meta)
    source_lora = checkpoint.lora_config_from_meta(meta, f"{directory}/{step}/meta")
    if spec.lora_cfg is not None and cfg.init.adapter == "continue":
        source, wanted = to_dict(source_lora), to_dict(spec.lora_cfg)
        if any(source[k] != wanted[k] for k in LORA_IDENTITY):
            shown = lambda d: {k: d[k] for k in LORA_IDENTITY}  # noqa: E731
            raise UserError(f"init.adapter=continue: the LoRA adapter of {directory} ({shown(source)}) differs from "
                            f"this run's lora section ({shown(wanted)}); make them agree or set init.adapter=merge")
        base_dir, base_step = checkpoint.lora_base(directory, step, meta)  # the same frozen base, checked
        base = checkpoint.restore_params(base_dir, nnx.to_pure_dict(spec.abstract_frozen), base_step)
        adapters = checkpoint.restore_lora(directory, nnx.to_pure_dict(spec.abstract_trainable), step)
        return base, adapters, _saved_base(base_dir, base_step, checkpoint.read_meta(base_dir, base_step))
    model, _ = checkpoint.load_model(directory, spec.mesh, step, model_overrides=_model_dict(spec.model_cfg))
    return checkpoint.params_of(model), None, None


def _saved_base(directory: str, step: int, meta: dict) -> Base:
    """A checkpoint a LoRA run may reference as its base: one with array checksums."""
    return (str(directory), step) if meta.get("arrays", {}).get("params") else None


def _model_dict(model_cfg: ModelConfig) -> dict:
    return {k: getattr(model_cfg, k) for k in EXECUTION_FIELDS}
