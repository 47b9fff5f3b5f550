"""Orbax checkpoints of msm-jax models.

A checkpoint directory is an Orbax CheckpointManager directory. Every step holds the
item `params` (the model's pure parameter tree) and the item `meta` (JSON: the model
config, the parameter layout, the format version, and a record of every saved array:
shape, dtype and checksum), so a checkpoint describes itself and conversion or restore
never needs a flag that must match how it was written. Training adds its own items next
to these: `opt_state` (optax state of the trainable weights), `lora` (adapter weights of a
LoRA run) and `train` (JSON: step, seed, RNG key, data position, tokens seen).

A LoRA run's steps hold what changes: the adapter, its optimizer state and the train
record; its `meta` names the LoRA config and references the frozen base by path and
content hash (`base`), and `params` is absent. The base is another stage's checkpoint, or
one copy the run wrote once into `base-<hash>/` beside its steps. `restore_params` and
`load_model` follow the reference (`load_model` returns the merged model) and refuse a base
whose content hash differs.

Every array is verified against its checksum when restored (`msm_jax.checksums`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from msm_jax import checksums
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
BASE_PREFIX = "base-"  # <checkpoint dir>/base-<hash>: the frozen base a LoRA run saved itself
# ModelConfig fields that say how to run the model, not what it is (free to change on resume).
EXECUTION_FIELDS = ("param_dtype", "compute_dtype", "scan_layers", "remat_policy", "attention_impl")
LORA_IDENTITY = ("rank", "alpha", "targets")  # what the adapter weights mean (dropout does not)


class CorruptCheckpoint(UserError):
    """A step's files cannot be read back as they were written (unreadable, or a checksum
    differs). A training run sets such a step aside and resumes from an older one."""


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


# ---------------------------------------------------------------------------------------
# Array records: shape, dtype and checksum of every saved array, kept in `meta`
# ---------------------------------------------------------------------------------------


def array_records(items: dict[str, Any]) -> dict[str, dict]:
    """{item: {array name: {shape, dtype, checksum}}} of pytrees of jax arrays (on any mesh)."""
    out = {}
    for item, tree in items.items():
        sums = checksums.tree_checksums(tree)
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        out[item] = {checksums.key_name(path): {"shape": list(x.shape), "dtype": str(x.dtype),
                                                "checksum": sums[checksums.key_name(path)]} for path, x in flat}
    return out


def record_hash(record: dict) -> str:
    """Content hash of an item from its array record. Each checksum is computed from the
    array's bytes when saved and verified on every restore, so hashing the record (a few KB)
    identifies the content of a 64 GB base without reading it."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _structure_difference(record: dict, target: Any) -> Optional[str]:
    """How the arrays of `target` differ from a saved record (names and shapes), or None."""
    wanted = {checksums.key_name(p): list(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
    for name, shape in wanted.items():
        if name not in record:
            return f"this run has an array {name} that the checkpoint does not"
        if record[name]["shape"] != shape:
            return f"array {name} is {record[name]['shape']} in the checkpoint but {shape} in this run"
    extra = sorted(set(record) - set(wanted))
    return f"the checkpoint has an array {extra[0]} that this run does not" if extra else None


def _as_saved(target: Any, record: Optional[dict]) -> Any:
    """The target with each array's saved dtype, so it is verified before any cast."""
    if not record:
        return target

    def saved(path, t):
        entry = record.get(checksums.key_name(path))
        return t if entry is None else jax.ShapeDtypeStruct(t.shape, np.dtype(entry["dtype"]), sharding=t.sharding)
    return jax.tree_util.tree_map_with_path(saved, target)


def _verify(tree: Any, record: Optional[dict], where: str, item: str) -> None:
    if not record:
        return  # written before checksums were recorded
    for name, got in checksums.tree_checksums(tree).items():
        want = record.get(name, {}).get("checksum")
        if want is not None and got != want:
            raise CorruptCheckpoint(f"{where}: array {item}.{name} fails its checksum (saved {want}, read {got}); "
                                    "the checkpoint is corrupt")


def _cast_like(tree: Any, target: Any) -> Any:
    return jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype), tree, target)


_ORPHAN_REPORTS = ("Task exception was never retrieved", "Task was destroyed but it is pending!")
_ORBAX_CORO = re.compile(r"coro=<[^>]*defined at [^>]*/orbax/checkpoint/")


class _OrbaxOrphanFilter(logging.Filter):
    """Drops asyncio's reports about tasks that Orbax left behind in a loop it closed: the
    report's first line says the task was orphaned, the task's repr names the file that
    defines its coroutine."""

    def filter(self, record: logging.LogRecord) -> bool:
        first, _, rest = record.getMessage().partition("\n")
        return not (first in _ORPHAN_REPORTS and _ORBAX_CORO.search(rest.split("\n", 1)[0]))


def _quiet_closed_loop_reports() -> None:
    """Orbax runs a restore in its own asyncio loop and closes it without cancelling what
    is left. When one read fails, the reads still in flight finish after the failure was
    already handled: tensorstore's completions report "Event loop is closed" as unraisable
    exceptions (hundreds of tracebacks for one truncated file), and when the garbage
    collector gets to the orphaned tasks, asyncio logs each one's exception with its
    traceback. Drop exactly those reports: the unraisable "Event loop is closed", and
    asyncio's orphaned-task reports whose task is a coroutine defined in Orbax."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxOrphanFilter) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrbaxOrphanFilter())
    previous = sys.unraisablehook
    if getattr(previous, "msm_quiet", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    hook.msm_quiet = True
    sys.unraisablehook = hook


def save_params(directory: str | os.PathLike, params: Any, meta: dict, step: int = 0,
                save_args: Any = None) -> None:
    """Write one checkpoint step holding only `params` and `meta` (imports, merges);
    `save_args` (a tree of `ocp.SaveArgs`) sets the storage chunking."""
    meta = dict(meta, arrays=array_records({"params": params}))
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
    """Restore one item onto `target` (ShapeDtypeStructs with shardings, possibly for another
    mesh), verified against the checksums in the step's meta."""
    record = read_meta(directory, step).get("arrays", {}).get(item)
    if record:
        difference = _structure_difference(record, target)
        if difference:
            raise UserError(f"{directory} step {step}: cannot restore {what}: {difference}")
    _quiet_closed_loop_reports()
    with manager(directory, item_names=(item,)) as mngr:
        try:
            out = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(
                _as_saved(target, record))}))
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise UserError(f"{directory} step {step}: cannot restore {what}: {str(e).splitlines()[0][:300]}") from None
    _verify(out[item], record, f"{directory} step {step}", item)
    return _cast_like(out[item], target)


def restore_params(directory: str | os.PathLike, target: Any, step: Optional[int] = None) -> Any:
    """Restore the `params` item onto `target`, which may describe a different mesh than the
    one that wrote it. For a LoRA checkpoint these are the frozen base's weights, read from
    the checkpoint its meta references."""
    step = latest_step(directory) if step is None else step
    base_dir, base_step = lora_base(directory, step)
    return _restore_item(base_dir, "params", target, base_step, "params")


# ---------------------------------------------------------------------------------------
# The frozen base of a LoRA checkpoint: referenced by path and content hash
# ---------------------------------------------------------------------------------------


def content_hash(directory: str | os.PathLike, step: int) -> str:
    """The content hash of a checkpoint's `params` (see `record_hash`)."""
    record = read_meta(directory, step).get("arrays", {}).get("params")
    if not record:
        raise UserError(f"{directory} step {step}: has no array checksums (written by an older msm-jax); "
                        "re-save it (msm convert hf-to-orbax, or train it again) to use it as a LoRA base")
    return record_hash(record)


def base_reference(base_dir: str | os.PathLike, base_step: int, holder: str | os.PathLike) -> dict:
    """What a LoRA checkpoint in `holder` records about its frozen base: absolute path, the
    path relative to `holder` (so a moved experiment folder still resolves), step, hash."""
    ref = {"path": str(_path(base_dir)), "step": int(base_step), "hash": content_hash(base_dir, base_step)}
    if not is_remote(base_dir) and not is_remote(holder):
        ref["relative"] = os.path.relpath(_path(base_dir), _path(holder))
    return ref


def lora_base(directory: str | os.PathLike, step: Optional[int] = None,
              meta: Optional[dict] = None) -> tuple[str, int]:
    """(directory, step) whose `params` item holds the frozen base of the checkpoint at
    `directory`/`step`: itself, unless its meta references a base, which must be found with
    the recorded content hash."""
    step = latest_step(directory) if step is None else step
    meta = read_meta(directory, step) if meta is None else meta
    ref = meta.get("base")
    if not ref:
        return str(directory), step
    candidates = [ref["path"]]
    if ref.get("relative") and not is_remote(directory):
        candidates.insert(0, os.path.normpath(os.path.join(_path(directory), ref["relative"])))
    changed = None
    for cand in candidates:
        if (_path(cand) / str(ref["step"]) / "meta").exists():
            found = content_hash(cand, ref["step"])
            if found == ref["hash"]:
                return cand, ref["step"]
            changed = (cand, found)
    if changed:
        raise UserError(f"{directory} step {step}: its frozen base {changed[0]} step {ref['step']} has content hash "
                        f"{changed[1][:23]}... but the adapter was trained on {ref['hash'][:23]}...: the base was "
                        "replaced since; put the original base back or train the adapter again")
    raise UserError(f"{directory} step {step}: its frozen base {ref['path']} step {ref['step']} is missing "
                    "(a LoRA checkpoint holds only the adapter); restore the base checkpoint there")


def save_base_copy(directory: str | os.PathLike, params: Any, meta: dict) -> tuple[str, int]:
    """Save a LoRA run's frozen base once, as `<directory>/base-<hash>` (reused when a copy
    with that content is already there); returns (its directory, step)."""
    digest = record_hash(array_records({"params": params})["params"])
    target = _path(directory) / f"{BASE_PREFIX}{digest.split(':')[1][:16]}"
    _sync("msm_base_copy")  # every process looks before any starts writing
    if (target / "0" / "meta").exists() and content_hash(target, 0) == digest:
        return str(target), 0
    save_params(target, params, meta)
    return str(target), 0


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


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
# Training checkpoints: weights + optimizer + step/RNG/data position, restorable on any mesh
# ---------------------------------------------------------------------------------------


def train_manager(directory: str | os.PathLike, *, keep_last: Optional[int], keep_every: Optional[int],
                  async_save: bool) -> ocp.CheckpointManager:
    return manager(directory, max_to_keep=keep_last, keep_period=keep_every, async_save=async_save,
                   item_names=TRAIN_ITEMS)


def save_train_step(mngr: ocp.CheckpointManager, step: int, *, params: Optional[Any], lora: Optional[Any],
                    opt_state: Any, meta: dict, train_info: dict) -> None:
    """Queue one complete training checkpoint (async when the manager is). A LoRA run
    passes `params=None`: its meta references the frozen base instead."""
    arrays = {k: v for k, v in (("params", params), ("lora", lora), ("opt_state", opt_state)) if v is not None}
    items = {k: ocp.args.StandardSave(v) for k, v in arrays.items()}
    items["meta"] = ocp.args.JsonSave(dict(meta, step=step, arrays=array_records(arrays)))
    items["train"] = ocp.args.JsonSave(train_info)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)


def _looks_like_a_step(name: str) -> bool:
    """Orbax's own test for a step folder (a number, or anything ending in _<number>)."""
    return name.isdigit() or name.split("_")[-1].isdigit()


def candidate_steps(directory: str | os.PathLike) -> list[int]:
    """The step folders msm wrote, newest first; unfinished (temporary) ones are reported and
    skipped. A folder that Orbax would take for a step but msm did not write is refused, since
    Orbax would count it as a checkpoint and delete it when rotating old ones."""
    path = _path(directory)
    if not path.exists():
        return []
    steps = []
    for p in path.iterdir():
        if p.is_dir() and _looks_like_a_step(p.name):
            if not (p.name.isdigit() and ((p / "_CHECKPOINT_METADATA").exists() or (p / "meta").is_dir())):
                raise UserError(f"{p}: a folder msm did not write, named like a checkpoint step; Orbax would treat it "
                                f"as one (and delete it when rotating checkpoints): move it out of {directory}")
            steps.append(int(p.name))
        elif "tmp" in p.name:
            log.warning("%s: ignoring a partially written checkpoint (%s)", directory, p.name)
    return sorted(steps, reverse=True)


def identity_difference(meta: dict, model_cfg: ModelConfig, lora_cfg) -> Optional[str]:
    """How a checkpoint's model and LoRA config differ from a run's, or None. Execution
    options (dtypes, remat, scan, attention kernel) and LoRA dropout may differ."""
    saved = {k: v for k, v in meta.get("model", {}).items() if k not in EXECUTION_FIELDS}
    wanted = {k: v for k, v in to_dict(model_cfg).items() if k not in EXECUTION_FIELDS}
    for key in sorted(set(saved) & set(wanted)):
        if saved[key] != wanted[key]:
            return f"model.{key} is {saved[key]!r} in the checkpoint but {wanted[key]!r} in the config"
    saved_lora, wanted_lora = meta.get("lora"), (to_dict(lora_cfg) if lora_cfg is not None else None)
    if (saved_lora is None) != (wanted_lora is None):
        return ("the checkpoint has no LoRA adapter but the config has a lora section" if saved_lora is None
                else "the checkpoint holds a LoRA adapter but the config has no lora section")
    for key in LORA_IDENTITY if saved_lora else ():
        a, b = saved_lora.get(key), wanted_lora.get(key)
        if (sorted(a) != sorted(b)) if key == "targets" else (a != b):
            return f"lora.{key} is {a!r} in the checkpoint but {b!r} in the config"
    return None


def check_resumable(directory: str | os.PathLike, steps: list[int], model_cfg: ModelConfig, lora_cfg,
                    targets: dict[str, Any]) -> None:
    """Refuse (one line, nothing touched) when any readable step was written for another
    model, LoRA setting or optimizer: such a step is not corrupt, it belongs to another config."""
    for step in steps:
        try:
            meta = read_meta(directory, step)
        except UserError:
            continue  # unreadable: restoring finds it corrupt
        difference = identity_difference(meta, model_cfg, lora_cfg)
        records = meta.get("arrays")
        for item, target in targets.items() if records and difference is None else ():
            difference = (f"the checkpoint has no {item} item" if item not in records
                          else _structure_difference(records[item], target))
            difference = difference and f"{item}: {difference}"
            if difference:
                break
        if difference:
            raise UserError(f"{directory}: checkpoint step {step} was written by another config ({difference}); "
                            "use a new run_dir (or checkpoint.directory), or restore the old setting")


def restore_train_step(directory: str | os.PathLike, step: int, meta: dict, targets: dict[str, Any]) -> dict:
    """The array items in `targets` (placed like them: any mesh, any process count), verified
    against their checksums, plus the `train` record and `meta`."""
    records = meta.get("arrays", {})
    args = {k: ocp.args.StandardRestore(_as_saved(t, records.get(k))) for k, t in targets.items()}
    _quiet_closed_loop_reports()
    with manager(directory, item_names=TRAIN_ITEMS) as mngr:
        out = dict(mngr.restore(step, args=ocp.args.Composite(train=ocp.args.JsonRestore(), **args)))
    for item, target in targets.items():
        _verify(out[item], records.get(item), f"{directory}: checkpoint step {step}", item)
        out[item] = _cast_like(out[item], target)
    return dict(out, meta=meta)


def set_aside(directory: str | os.PathLike, step: int) -> str:
    """Rename a broken step folder to `<step>.broken` (or `.broken-N` beside earlier ones):
    kept for inspection, no longer a step. Returns the new name."""
    src = _path(directory) / str(step)
    dst, n = _path(directory) / f"{step}.broken", 1
    while dst.exists():
        dst, n = _path(directory) / f"{step}.broken-{n}", n + 1
    src.rename(dst)
    log.warning("%s: moved the broken checkpoint step %d aside to %s", directory, step, dst.name)
    return dst.name


def restore_latest_train_step(directory: str | os.PathLike, steps: list[int],
                              targets: dict[str, Any]) -> tuple[Optional[dict], list[int]]:
    """(items of the newest of `steps` that restores completely and verifies, or None; the
    newer steps skipped, each with a one-line warning, because they are partial or corrupt)."""
    broken = []
    for step in steps:
        try:
            items = restore_train_step(directory, step, read_meta(directory, step), targets)
        except CorruptCheckpoint as e:
            log.warning("%s; using an older one", e)
            broken.append(step)
            continue
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
