"""The stage graph of an experiment: generate -> tokenizer -> shards -> midtrain -> sft ->
export -> eval per arm, then the report.

A stage is an `msm` command line (or, for the report, a Python callable) whose arguments
may name folders symbolically: `@out@` is the stage's own folder, `@local@` a local one
(the same folder unless that is gs://) and `@ID@` the folder of the upstream stage ID.
A stage's key hashes its command template, its resolved YAML config, the content of the
local files they name, and its upstream stages' keys; its folder is OUT/KIND/NAME-KEY, so
identical stages (in two arms, or in two runs of a sweep) are one stage, and a changed
stage never resumes from a stale folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from msm_jax.config import CONFIGS_DIR, ConfigError, load_tree
from msm_jax.experiment import paths
from msm_jax.experiment.config import ArmConfig, ExperimentConfig, TrainStageConfig

REPO_ROOT = CONFIGS_DIR.parent
CHECKPOINT_SUBDIR = "checkpoints"  # train stages: checkpoint.directory=STAGE/checkpoints
LOCAL_MIRROR = ".msm_local"  # local run_dir (metrics, logs) of train stages whose folder is gs://
PLACEHOLDER = re.compile(r"@([A-Za-z0-9_./:-]+)@")
KEY_CHARS = 10
DEFAULT_DATASET_FILES = {"docs": "docs.jsonl", "chats": "chats_cot.jsonl"}  # what `msm generate` writes


@dataclasses.dataclass
class Stage:
    id: str  # e.g. "midtrain/affordability"
    kind: str  # generate | tokenizer | shards | import | pretrain | midtrain | sft | export | eval | report
    argv: list[str]  # `msm` arguments with @out@ / @ID@ placeholders
    deps: list[str]  # upstream stage ids
    config: Optional[str] = None  # the command's YAML (hashed resolved, with its overrides)
    call: Optional[Callable[["Stage", dict], None]] = None  # Python stage instead of a command
    estimate: dict = dataclasses.field(default_factory=dict)  # tokens / steps / spend for the plan
    key: str = ""
    dir: str = ""

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[-1] or self.kind


def resolve_file(path: str) -> str:
    """A config path as given, or under the repository when it is not found from here."""
    if paths.is_remote(path) or Path(path).exists():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def yaml_list(items: list[Any]) -> str:
    """A flow-style YAML value for a key=value override."""
    return json.dumps(items)


# ---------------------------------------------------------------------------------------
# Building the graph
# ---------------------------------------------------------------------------------------


def _generate_stages(cfg: ExperimentConfig) -> list[Stage]:
    stages = []
    for name, ds in cfg.datasets.items():
        if ds.path is not None:
            continue
        config = resolve_file(ds.config)
        argv = ["generate", ds.kind, config, *ds.overrides, "--out-dir", "@out@", "--no-progress"]
        if ds.spec:
            argv += ["--spec", resolve_file(ds.spec)]
        stages.append(Stage(id=f"generate/{name}", kind="generate", argv=argv + list(ds.args), deps=[],
                            config=config))
    return stages


def dataset_file(cfg: ExperimentConfig, name: str) -> str:
    """Where dataset `name` lives: a generation stage's output, or the given path."""
    ds = cfg.datasets[name]
    if ds.path is not None:
        return resolve_file(ds.path)
    return f"@generate/{name}@/{ds.file or DEFAULT_DATASET_FILES[ds.kind]}"


def _dataset_deps(cfg: ExperimentConfig, names) -> list[str]:
    return [f"generate/{n}" for n in names if cfg.datasets[n].path is None]


def _trains_tokenizer(cfg: ExperimentConfig) -> bool:
    return cfg.tokenizer is not None and cfg.tokenizer.path is None


def _tokenizer_stage(cfg: ExperimentConfig) -> Optional[Stage]:
    tok = cfg.tokenizer
    if not _trains_tokenizer(cfg):
        return None
    argv = ["tokenizer", "train", *[dataset_file(cfg, d) for d in tok.data], "--out", "@out@/tokenizer",
            "--vocab-size", str(tok.vocab_size), "--model-type", tok.model_type, *tok.args]
    return Stage(id="tokenizer", kind="tokenizer", argv=argv, deps=_dataset_deps(cfg, tok.data))


def tokenizer_path(cfg: ExperimentConfig) -> str:
    if cfg.tokenizer is not None and cfg.tokenizer.path is not None:
        return resolve_file(cfg.tokenizer.path)
    return "@tokenizer@/tokenizer.model"


def _shard_stages(cfg: ExperimentConfig) -> list[Stage]:
    stages = []
    for name, sh in cfg.shards.items():
        inputs = [{"path": dataset_file(cfg, d), "kind": cfg.datasets[d].kind} for d in sh.data]
        config = resolve_file(sh.config)
        argv = ["shards", config, *sh.overrides, f"inputs={yaml_list(inputs)}",
                f"tokenizer={tokenizer_path(cfg)}", "--out", "@out@"]
        if sh.budget_tokens is not None:
            argv += ["--budget-tokens", str(sh.budget_tokens)]
        deps = _dataset_deps(cfg, sh.data) + (["tokenizer"] if _trains_tokenizer(cfg) else [])
        stages.append(Stage(id=f"shards/{name}", kind="shards", argv=argv + list(sh.args), deps=deps,
                            config=config, estimate={"tokens": sh.tokens, "budget": sh.budget_tokens is not None}))
    return stages


def _train_stage(cfg: ExperimentConfig, kind: str, arm_name: str, st: TrainStageConfig,
                 init_from: Optional[str]) -> Stage:
    if st.mix == "tokens":
        weights = tuple(float(cfg.shards[s].tokens) for s in st.shards)
    else:
        weights = st.weights or (1.0,) * len(st.shards)
    sources = [{"path": f"@shards/{s}@", "weight": w} for s, w in zip(st.shards, weights)]
    config = resolve_file(st.config)
    argv = ["train", config, *st.overrides, "run_dir=@local@", f"checkpoint.directory=@out@/{CHECKPOINT_SUBDIR}",
            f"data.sources={yaml_list(sources)}"]
    deps = [f"shards/{s}" for s in st.shards]
    if init_from is not None:
        argv.append(f"init.from_checkpoint=@{init_from}@/{CHECKPOINT_SUBDIR}")
        deps.append(init_from)
    return Stage(id=f"{kind}/{arm_name}", kind=kind, argv=argv + list(st.args), deps=deps, config=config,
                 estimate=_train_estimate(config, st.overrides))


def base_stage(cfg: ExperimentConfig) -> Optional[str]:
    """The stage every arm starts from: the imported HF model, the pretrained one, or none."""
    if cfg.base_model is not None:
        return "import"
    return "pretrain" if cfg.pretrain is not None else None


def final_train_stage(cfg: ExperimentConfig, arm_name: str, arm: ArmConfig) -> str:
    if arm.sft is not None:
        return f"sft/{arm_name}"
    return f"midtrain/{arm_name}" if arm.midtrain is not None else base_stage(cfg)


def _arm_stages(cfg: ExperimentConfig, arm_name: str, arm: ArmConfig) -> list[Stage]:
    stages = []
    base = base_stage(cfg)
    if arm.midtrain is not None:
        stages.append(_train_stage(cfg, "midtrain", arm_name, arm.midtrain, base))
    if arm.sft is not None:
        init = f"midtrain/{arm_name}" if arm.midtrain is not None else base
        stages.append(_train_stage(cfg, "sft", arm_name, arm.sft, init))
    final = final_train_stage(cfg, arm_name, arm)
    imported_as_is = arm.midtrain is None and arm.sft is None and cfg.base_model is not None
    if cfg.export and not imported_as_is:  # a baseline on an imported model is its HF dir already
        argv = ["convert", "orbax-to-hf", f"@{final}@/{CHECKPOINT_SUBDIR}", "@out@"]
        if cfg.tokenizer is not None:
            tok = tokenizer_path(cfg)
            argv += ["--tokenizer", tok.rsplit("/", 1)[0] if tok.endswith(".model") else tok]
        deps = [final] + (["tokenizer"] if _trains_tokenizer(cfg) else [])
        stages.append(Stage(id=f"export/{arm_name}", kind="export", argv=argv, deps=deps))
    for eval_name, ev in cfg.evals.items():
        if ev.model == "hf" and imported_as_is:
            model, dep, backend = resolve_file(cfg.base_model), None, "transformers"
        elif ev.model == "hf":
            model, dep, backend = f"@export/{arm_name}@", f"export/{arm_name}", "transformers"
        else:
            model, dep, backend = f"@{final}@/{CHECKPOINT_SUBDIR}", final, "jax"
        config = resolve_file(ev.config)
        wiring = [f"backend.path={model}", "out_dir=@out@"]
        if backend == "jax" and cfg.tokenizer is not None:
            wiring.append(f"backend.tokenizer={tokenizer_path(cfg)}")
        argv = ["eval", ev.name or eval_name, config, f"backend.kind={backend}", *ev.overrides,
                *arm.eval_overrides, *wiring]
        deps = ([dep] if dep else []) + (["tokenizer"] if backend == "jax" and _trains_tokenizer(cfg) else [])
        stages.append(Stage(id=f"eval/{eval_name}/{arm_name}", kind="eval", argv=argv, deps=deps, config=config))
    return stages


def build_stages(cfg: ExperimentConfig, report: Optional[Callable] = None) -> list[Stage]:
    """Every stage of the experiment in an order where each stage follows its inputs."""
    stages = _generate_stages(cfg)
    tok = _tokenizer_stage(cfg)
    stages += [tok] if tok else []
    stages += _shard_stages(cfg)
    if cfg.base_model is not None:
        argv = ["convert", "hf-to-orbax", resolve_file(cfg.base_model), f"@out@/{CHECKPOINT_SUBDIR}"]
        stages.append(Stage(id="import", kind="import", argv=argv, deps=[]))
    if cfg.pretrain is not None:
        pretrain = _train_stage(cfg, "pretrain", "", cfg.pretrain, None)
        pretrain.id = "pretrain"
        stages.append(pretrain)
    for arm_name, arm in cfg.arms.items():
        stages += _arm_stages(cfg, arm_name, arm)
    if cfg.report and report is not None:
        deps = [s.id for s in stages if s.kind in ("pretrain", "midtrain", "sft", "eval")]
        stages.append(Stage(id="report", kind="report", argv=[], deps=deps, call=report))
    return stages


# ---------------------------------------------------------------------------------------
# Keys and folders
# ---------------------------------------------------------------------------------------


def _overrides_after(argv: list[str], config: str) -> list[str]:
    """The key=value overrides that follow the config file, up to the first flag."""
    out = []
    for a in argv[argv.index(config) + 1:]:
        if a.startswith("-"):
            break
        out.append(a)
    return out


def _leaves(tree: Any):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


def _file_hashes(strings) -> dict[str, str]:
    """Content hashes of the local files among `strings` (configs, specs, word lists...)."""
    out = {}
    for s in strings:
        if isinstance(s, str) and s and "@" not in s and not paths.is_remote(s) and len(s) < 1024:
            p = Path(s)
            if p.is_file():
                out[s] = paths.content_hash(p)
    return out


def stage_fingerprint(stage: Stage, dep_keys: dict[str, str]) -> dict:
    """Everything the stage's result depends on, as plain JSON."""
    tree: Any = None
    if stage.config is not None:
        try:
            tree, _ = load_tree(stage.config, _overrides_after(stage.argv, stage.config))
        except ConfigError as e:
            raise ConfigError(f"stage {stage.id}: {e}") from None
    strings = list(stage.argv) + list(_leaves(tree))
    return {"kind": stage.kind, "argv": stage.argv, "config": tree, "files": _file_hashes(strings),
            "deps": {d: dep_keys[d] for d in stage.deps},
            "call": f"{stage.call.__module__}.{stage.call.__qualname__}" if stage.call else None}


def _key(fingerprint: dict) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def local_dir(stage: Stage) -> str:
    """The stage's folder if local; else a local mirror (train metrics, logs) under LOCAL_MIRROR.
    The report, written here, also goes to the mirror when its folder is a bucket mount this
    machine lacks (paths.route)."""
    if stage.kind == "report" and paths.routed(stage.dir):
        return str(Path(LOCAL_MIRROR) / stage.dir.lstrip("/"))
    if not paths.is_remote(stage.dir):
        return stage.dir
    return str(Path(LOCAL_MIRROR) / stage.dir.split("://", 1)[1])


def substitute(text: str, dirs: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1)
        if name not in dirs:
            raise ConfigError(f"stage argument {text!r} names unknown stage {name!r}")
        return dirs[name]
    return PLACEHOLDER.sub(one, text)


def resolve(stages: list[Stage], out: str) -> list[Stage]:
    """Fill in every stage's key and folder (in order), and its concrete command line."""
    keys: dict[str, str] = {}
    dirs: dict[str, str] = {}
    dir_of_key: dict[str, str] = {}  # identical stages under two names share the first one's folder
    for stage in stages:
        missing = [d for d in stage.deps if d not in keys]
        if missing:
            raise ConfigError(f"stage {stage.id} needs {missing}, which come later or do not exist")
        stage.key = _key(stage_fingerprint(stage, keys))
        if stage.kind == "report":
            stage.dir = paths.join(out, "report")
        else:
            stage.dir = dir_of_key.setdefault(
                stage.key, paths.join(out, stage.kind, f"{stage.name.replace('/', '-')}-{stage.key[:KEY_CHARS]}"))
        keys[stage.id], dirs[stage.id] = stage.key, stage.dir
        dirs["out"], dirs["local"] = stage.dir, local_dir(stage)
        stage.argv = [substitute(a, dirs) for a in stage.argv]
    return stages


def _train_estimate(config: str, overrides: tuple[str, ...]) -> dict:
    """Steps and tokens per step as far as the train YAML states them (for the plan)."""
    try:
        tree, _ = load_tree(config, overrides)
    except ConfigError:
        return {}
    train, data = tree.get("train") or {}, tree.get("data") or {}
    batch, seq = train.get("global_batch"), train.get("seq_len")
    tokens_per_step = batch * seq if isinstance(batch, int) and isinstance(seq, int) else None
    return {"steps": train.get("steps"), "tokens_per_step": tokens_per_step, "epochs": data.get("num_epochs")}
