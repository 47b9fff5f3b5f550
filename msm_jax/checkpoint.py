"""Orbax checkpoints of msm-jax models.

A checkpoint directory is an Orbax CheckpointManager directory. Every step holds the
item `params` (the model's pure parameter tree) and the item `meta` (JSON: the model
config, the parameter layout, the format version), so a checkpoint describes itself and
conversion or restore never needs a flag that must match how it was written. Training
adds its own items next to these: `opt_state` (optax state of the trainable weights),
`lora` (adapter weights of a LoRA run; `params` then holds the frozen base) and `train`
(JSON: step, seed, RNG key, data position, tokens seen). A LoRA run's `meta` names its
LoRA config, and `load_model` returns the merged model.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from flax import nnx

from msm_jax.config import ConfigError, from_dict, to_dict
from msm_jax.errors import UserError
from msm_jax.models.build import abstract_model
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.sharding import MeshConfig, make_mesh

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LAYOUT = "stacked"  # every layer parameter has a leading `layers` axis
TRAIN_ITEMS = ("params", "meta", "lora", "opt_state", "train")


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(("gs://", "s3://"))


def _path(directory: str | os.PathLike):
    """A local absolute Path, or an epath for gs:// (Orbax handles both)."""
    if is_remote(directory):
        from etils import epath
        return epath.Path(str(directory))
    return Path(directory).absolute()


def make_meta(model_cfg: ModelConfig, **extra: Any) -> dict:
    return {"format_version": FORMAT_VERSION, "layout": LAYOUT, "model": to_dict(model_cfg), **extra}


def manager(directory: str | os.PathLike, *, max_to_keep: Optional[int] = None,
            keep_period: Optional[int] = None, async_save: bool = False,
            item_names: tuple[str, ...] = ("params", "meta")) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(_path(directory), options=options, item_names=item_names)


def save_params(directory: str | os.PathLike, params: Any, meta: dict, step: int = 0,
                save_args: Any = None) -> None:
    """Write one checkpoint step holding only `params` and `meta` (imports, merges);
    `save_args` (a tree of `ocp.SaveArgs`) sets the storage chunking."""
    with manager(directory) as mngr:
        mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params, save_args=save_args),
                                                 meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int:
    path = _path(directory)
    if not path.exists():
        raise UserError(f"{directory}: checkpoint directory does not exist")
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "meta").exists())
    if not steps:
        raise UserError(f"{directory}: no complete checkpoint step found (expected numbered step "
                        "folders with a 'meta' item, as written by msm train or msm convert)")
    return steps[-1]


def read_meta(directory: str | os.PathLike, step: Optional[int] = None) -> dict:
    step = latest_step(directory) if step is None else step
    meta_dir = _path(directory) / str(step) / "meta"
    candidates = [meta_dir / "metadata"] + sorted(meta_dir.iterdir()) if meta_dir.exists() else []
    for cand in candidates:
        if cand.is_file():
            try:
                meta = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{cand}: corrupt checkpoint metadata ({e})") from None
            if isinstance(meta, dict) and "model" in meta:
                break
    else:
        raise UserError(f"{meta_dir}: checkpoint metadata missing")
    if meta.get("format_version") != FORMAT_VERSION or meta.get("layout") != LAYOUT:
        raise UserError(f"{meta_dir}: unsupported checkpoint format {meta.get('format_version')!r} "
                        f"/ layout {meta.get('layout')!r} (this msm-jax reads {FORMAT_VERSION}/{LAYOUT})")
    return meta


def model_config_from_meta(meta: dict, where: str = "checkpoint meta") -> ModelConfig:
    try:
        return from_dict(ModelConfig, meta["model"], {"": where}, "model")
    except ConfigError as e:
        raise UserError(f"{where}: invalid model config: {e}") from None


def _restore_item(directory: str | os.PathLike, item: str, target: Any, step: int, what: str) -> Any:
    """Restore one item onto `target` (ShapeDtypeStructs with shardings, possibly for another mesh)."""
    with manager(directory, item_names=(item,)) as mngr:
        try:
            out = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"{directory} step {step}: cannot restore {what}: {e}") from None
    return out[item]


def restore_params(directory: str | os.PathLike, target: Any, step: Optional[int] = None) -> Any:
    """Restore the `params` item onto `target`, which may describe a different mesh than the
    one that wrote it."""
    step = latest_step(directory) if step is None else step
    return _restore_item(directory, "params", target, step, "params")


def load_model(directory: str | os.PathLike, mesh: Optional[jax.sharding.Mesh] = None,
               step: Optional[int] = None, model_overrides: Optional[dict] = None) -> tuple[Decoder, dict]:
    """The Decoder saved in `directory` (latest step by default), sharded over `mesh`.
    `model_overrides` changes execution options (dtype, remat, attention kernel)."""
    step = latest_step(directory) if step is None else step
    meta = read_meta(directory, step)
    cfg_dict = dict(meta["model"], **(model_overrides or {}))
    cfg = model_config_from_meta({"model": cfg_dict}, f"{directory}/{step}/meta")
    if mesh is None:
        mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    if meta.get("lora"):
        return _load_lora_model(directory, mesh, step, cfg, meta), meta
    graphdef, abstract = abstract_model(cfg, mesh)
    target = nnx.to_pure_dict(abstract)
    params = restore_params(directory, target, step)
    nnx.replace_by_pure_dict(abstract, params)
    return nnx.merge(graphdef, abstract), meta


def lora_config_from_meta(meta: dict, where: str = "checkpoint meta"):
    from msm_jax.models.lora import LoRAConfig

    try:
        return from_dict(LoRAConfig, meta["lora"], {"": where}, "lora")
    except ConfigError as e:
        raise UserError(f"{where}: invalid LoRA config: {e}") from None


def abstract_lora_model(cfg: ModelConfig, lora_cfg, mesh: jax.sharding.Mesh):
    """(graphdef, base state, adapter state): ShapeDtypeStructs with `mesh` shardings."""
    from msm_jax.models.build import state_shardings
    from msm_jax.models.lora import LoRAParam, apply_lora

    model = nnx.eval_shape(lambda: apply_lora(Decoder(cfg, nnx.Rngs(0)), lora_cfg))
    graphdef, base, adapters = nnx.split(model, nnx.Param, LoRAParam)

    def place(state):
        shardings = state_shardings(state, mesh)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)

    return graphdef, place(base), place(adapters)


def restore_lora(directory: str | os.PathLike, target: Any, step: int) -> Any:
    return _restore_item(directory, "lora", target, step, "the LoRA adapter")


def _load_lora_model(directory, mesh, step: int, cfg: ModelConfig, meta: dict) -> Decoder:
    from msm_jax.models.lora import merge_lora

    lora_cfg = lora_config_from_meta(meta, f"{directory}/{step}/meta")
    graphdef, base, adapters = abstract_lora_model(cfg, lora_cfg, mesh)
    nnx.replace_by_pure_dict(base, restore_params(directory, nnx.to_pure_dict(base), step))
    nnx.replace_by_pure_dict(adapters, restore_lora(directory, nnx.to_pure_dict(adapters), step))
    return merge_lora(nnx.merge(graphdef, base, adapters))


def params_of(model: Decoder) -> dict:
    """The pure parameter tree that the `params` item stores."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# ---------------------------------------------------------------------------------------
# Training checkpoints: params + optimizer + step/RNG/data position, restorable on any mesh
# ---------------------------------------------------------------------------------------


def train_manager(directory: str | os.PathLike, *, keep_last: Optional[int], keep_every: Optional[int],
                  async_save: bool) -> ocp.CheckpointManager:
    return manager(directory, max_to_keep=keep_last, keep_period=keep_every, async_save=async_save,
                   item_names=TRAIN_ITEMS)


def save_train_step(mngr: ocp.CheckpointManager, step: int, *, params: Any, lora: Optional[Any],
                    opt_state: Any, meta: dict, train_info: dict) -> None:
    """Queue one complete training checkpoint (async when the manager is)."""
    items = {"params": ocp.args.StandardSave(params), "opt_state": ocp.args.StandardSave(opt_state),
             "meta": ocp.args.JsonSave(dict(meta, step=step)), "train": ocp.args.JsonSave(train_info)}
    if lora is not None:
        items["lora"] = ocp.args.StandardSave(lora)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)


def candidate_steps(directory: str | os.PathLike) -> list[int]:
    """Finalised step folders, newest first; unfinished (temporary) ones are reported and skipped."""
    path = _path(directory)
    if not path.exists():
        return []
    steps = []
    for p in path.iterdir():
        if p.name.isdigit():
            steps.append(int(p.name))
        elif "tmp" in p.name:
            log.warning("%s: ignoring a partially written checkpoint (%s)", directory, p.name)
    return sorted(steps, reverse=True)


def restore_train_step(directory: str | os.PathLike, step: int, *, params_target: Any,
                       lora_target: Optional[Any], opt_target: Any) -> dict:
    """All training items of one step, placed like the targets (any mesh, any process count)."""
    items = {"params": ocp.args.StandardRestore(params_target), "opt_state": ocp.args.StandardRestore(opt_target),
             "meta": ocp.args.JsonRestore(), "train": ocp.args.JsonRestore()}
    if lora_target is not None:
        items["lora"] = ocp.args.StandardRestore(lora_target)
    with manager(directory, item_names=TRAIN_ITEMS) as mngr:
        return dict(mngr.restore(step, args=ocp.args.Composite(**items)))


def set_aside(directory: str | os.PathLike, step: int) -> None:
    """Rename a broken step folder to `<step>.broken` (kept for inspection, no longer a step)."""
    src = _path(directory) / str(step)
    dst = _path(directory) / f"{step}.broken"
    if dst.exists():
        import shutil
        shutil.rmtree(dst)
    src.rename(dst)
    log.warning("%s: moved the broken checkpoint step %d aside to %s", directory, step, dst.name)


def restore_latest_train_step(directory: str | os.PathLike, **targets: Any) -> tuple[Optional[dict], list[int]]:
    """(items of the newest checkpoint that restores completely, or None when there is none;
    the newer steps skipped, each with a warning, because they are partial or corrupt)."""
    broken = []
    for step in candidate_steps(directory):
        try:
            items = restore_train_step(directory, step, **targets)
        except Exception as e:  # any unreadable item makes the whole step unusable
            log.warning("%s: checkpoint step %d is incomplete or corrupt, using an older one (%s: %s)",
                        directory, step, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
            broken.append(step)
            continue
        if not isinstance(items.get("train"), dict) or items["train"].get("step") != step:
            log.warning("%s: checkpoint step %d has no valid train record, using an older one", directory, step)
            broken.append(step)
            continue
        return items, broken
    return None, broken
