"""Typed, validated configs: YAML files that include each other, plus `a.b=value` overrides.

Every section of every config is a frozen dataclass. Loading walks the YAML tree against
the dataclass types, so an unknown key, a wrong type or a missing required field fails at
load time with the key's full dotted path and the file (or command line) it came from.

Composition:
  * `include: other.yaml` (or a list) at any mapping level merges those files first;
    the including mapping's own keys win. Paths resolve against the including file's
    folder, then against the repository's `configs/` folder.
  * `model: qwen3-0.6b` is shorthand for `{include: models/qwen3-0.6b.yaml}` when that
    preset file exists; an unknown preset where a model section is expected is an error
    that lists the available ones.
  * Overrides `model.num_layers=4` are parsed as YAML scalars and applied last.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, TypeVar, get_args, get_origin

import yaml

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

# Sections that accept a preset name; value is the folder under configs/.
PRESET_DIRS = {"model": "models"}

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, with the dotted key path and where the value came from."""


# ---------------------------------------------------------------------------------------
# Raw YAML trees: includes, presets, overrides. Each leaf remembers its source.
# ---------------------------------------------------------------------------------------


def _resolve_include(name: str, base_dir: Path | None, where: str) -> Path:
    candidates = []
    if base_dir is not None:
        candidates.append(base_dir / name)
    candidates.append(CONFIGS_DIR / name)
    candidates.append(Path(name))
    for cand in candidates:
        if cand.is_file():
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{where}: included file {name!r} not found (tried {tried})")


def _read_yaml(path: Path) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None


def _expand(node: Any, source: str, base_dir: Path | None, prefix: str,
            sources: dict[str, str], stack: tuple[Path, ...]) -> Any:
    """Resolve includes and presets below `node`; record the source of every leaf."""
    if not isinstance(node, dict):
        sources[prefix] = source
        return node
    merged: dict[str, Any] = {}
    includes = node.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{source}: {_join(prefix, 'include')}: expected a file name or a list of them")
    for inc in includes:
        path = _resolve_include(inc, base_dir, f"{source}: {_join(prefix, 'include')}").resolve()
        if path in stack:
            raise ConfigError(f"{source}: include cycle through {path}")
        sub = _read_yaml(path) or {}
        if not isinstance(sub, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        sub = _expand(sub, str(path), path.parent, prefix, sources, stack + (path,))
        _deep_merge(merged, sub)
    for key, value in node.items():
        if key == "include":
            continue
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {_join(prefix, str(key))}: keys must be strings")
        path = _join(prefix, key)
        value = _expand(_preset(key, value), source, base_dir, path, sources, stack)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _preset(key: str, value: Any) -> Any:
    """`model: qwen3-0.6b` -> `{include: models/qwen3-0.6b.yaml}` when that preset exists;
    other strings under such keys (e.g. an API model name) stay strings."""
    if key in PRESET_DIRS and isinstance(value, str) and (CONFIGS_DIR / PRESET_DIRS[key] / f"{value}.yaml").is_file():
        return {"include": f"{PRESET_DIRS[key]}/{value}.yaml"}
    return value


def preset_names(key: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS_DIR / PRESET_DIRS[key]).glob("*.yaml"))


def _deep_merge(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as a YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(tree: dict, key: str, value: Any, sources: dict[str, str]) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and isinstance(_preset(part, child), dict):
            child = _expand(_preset(part, child), "command line", None, ".".join(parts[: i + 1]), sources, ())
            node[part] = child
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"command line: {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    last = parts[-1]
    value = _preset(last, value)
    if isinstance(value, dict):
        value = _expand(value, "command line", None, key, sources, ())
    node[last] = value
    sources[key] = "command line"


def load_tree(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
              base: Mapping[str, Any] | None = None) -> tuple[dict, dict[str, str]]:
    """The merged raw tree and a map dotted-key -> source, before type checking."""
    sources: dict[str, str] = {}
    tree: dict[str, Any] = {}
    if base:
        tree = _expand(dict(base), "defaults", None, "", sources, ())
    if path is not None:
        p = Path(path)
        raw = _read_yaml(p) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        _deep_merge(tree, _expand(raw, str(p), p.resolve().parent, "", sources, (p.resolve(),)))
        sources.setdefault("", str(p))  # where a problem of the whole config is reported
    for text in overrides:
        key, value = parse_override(text)
        apply_override(tree, key, value, sources)
    return tree, sources


# ---------------------------------------------------------------------------------------
# Typed construction
# ---------------------------------------------------------------------------------------


def _where(path: str, sources: Mapping[str, str]) -> str:
    probe = path
    while probe:
        if probe in sources:
            return sources[probe]
        probe = probe.rpartition(".")[0]
    return sources.get("", "config")


def _fail(path: str, sources: Mapping[str, str], message: str) -> typing.NoReturn:
    raise ConfigError(f"{_where(path, sources)}: {path + ': ' if path else ''}{message}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, sources: Mapping[str, str]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        if len(choices) == 1:  # Optional[X]: X's own error names the inner key
            return _convert(value, choices[0], path, sources)
        for arg in choices:
            try:
                return _convert(value, arg, path, sources)
            except ConfigError:
                pass
        _fail(path, sources, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            _fail(path, sources, f"expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        key = path.rpartition(".")[2]
        if isinstance(value, str) and key in PRESET_DIRS:
            _fail(path, sources, f"unknown preset {value!r} (available in configs/{PRESET_DIRS[key]}/: "
                                 f"{', '.join(preset_names(key))})")
        if not isinstance(value, Mapping):
            _fail(path, sources, f"expected a section ({tp.__name__}), got {value!r}")
        return _build(tp, value, path, sources)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            _fail(path, sources, f"expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{path}[{i}]", sources) for i, v in enumerate(value)]
        return tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            _fail(path, sources, f"expected a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, _join(path, str(k)), sources) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, sources, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, sources, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 as a string (no dot); accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            _fail(path, sources, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, sources, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")


def _build(cls: type[T], data: Mapping[str, Any], path: str, sources: Mapping[str, str]) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(fields))})"
        _fail(_join(path, key), sources, f"unknown key{hint}")
    kwargs = {}
    for name, field in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], sub, sources)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            _fail(sub, sources, "required key is missing")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        _fail(path, sources, str(e))
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except (ValueError, TypeError) as e:
            _fail(path, sources, str(e))
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any], sources: Mapping[str, str] | None = None,
              path: str = "") -> T:
    """Build a config dataclass from a plain mapping, validating every key."""
    return _build(cls, data, path, sources or {})


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> T:
    """Load YAML at `path` (with includes) plus overrides into the dataclass `cls`."""
    tree, sources = load_tree(path, overrides, base)
    return _build(cls, tree, "", sources)


def to_dict(cfg: Any) -> Any:
    """A plain, YAML/JSON-serialisable tree of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: Any) -> str:
    """A stable content hash of a config, for manifests and stage skipping."""
    blob = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
