"""Run a list of resolved stages in order: skip the finished, resume the interrupted, run
the rest as `msm` subprocesses (exactly the commands a user would type), and print the plan
on `--dry-run`."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from msm_jax import storage
from msm_jax.errors import UserError
from msm_jax.experiment import manifest, paths
from msm_jax.experiment.launchers import Launcher, LocalPodLauncher, TpuLauncher, compile_cache_env
from msm_jax.experiment.stages import Stage

LOG_FILE = "stage.log"
BUCKET_MOUNT = "/gcs/"  # where tools/tpu/install.sh --bucket mounts Cloud Storage on every worker


def log_path(stage: Stage) -> Path:
    """The stage's log; for a gs:// (or routed) folder a local one under MSM_LOCAL_DIR/logs,
    uploaded into the stage folder when the stage ends."""
    if paths.is_remote(stage.dir):
        return storage.local_root() / "logs" / stage.dir.split("://", 1)[1] / LOG_FILE
    if paths.routed(stage.dir):
        return storage.local_root() / "logs" / stage.dir.lstrip("/") / LOG_FILE
    return Path(stage.dir) / LOG_FILE


def statuses(stages: list[Stage], unreachable_ok: bool = False) -> dict[str, manifest.Status]:
    """Plan-time status of every stage; a stage downstream of one that will run also runs
    (its key would not change, but its inputs are about to be rewritten). With
    `unreachable_ok` (dry runs), a gs:// manifest that cannot be read counts as not started."""
    out: dict[str, manifest.Status] = {}
    for stage in stages:
        try:
            status = "run" if stage.call is not None else manifest.stage_status(stage)
        except paths.RemoteUnavailable:
            if not unreachable_ok:
                raise
            status = "run"
        if status == "done" and any(out[d] != "done" for d in stage.deps):
            status = "run"
        out[stage.id] = status
    return out


# ---------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------


def print_plan(stages: list[Stage], launcher: Launcher, status: dict[str, manifest.Status], out=print,
               slice_cfg=None) -> None:
    """The stages, what each will do, and the estimates (tokens, steps, API spend, TPU hours)
    of what is still to run; fails (ConfigError) when a stage's warmup exceeds its steps."""
    from msm_jax.experiment import plan

    est = plan.estimate_stages(stages, slice_cfg)
    first_with_dir: dict[str, str] = {}
    for stage in stages:
        first_with_dir.setdefault(stage.dir, stage.id)
    shared = {s.id: first_with_dir[s.dir] for s in stages if first_with_dir[s.dir] != s.id}
    counts = {k: sum(1 for sid, v in status.items() if v == k and sid not in shared) for k in ("run", "resume", "done")}
    to_run = {s.id for s in stages if s.id not in shared and status[s.id] != "done"}
    total = plan.totals(stages, est, to_run)
    out(f"plan: {len(stages) - len(shared)} stages: {counts['run']} to run, {counts['resume']} to resume, "
        f"{counts['done']} done (skipped); estimated API spend ~${total['generation_usd'] + total['judging_usd']:.2f}")
    for line in plan.summary_lines(total, slice_cfg):
        out(f"  {line}")
    for stage in stages:
        action = "same" if stage.id in shared else {"run": "run", "resume": "resume", "done": "skip"}[status[stage.id]]
        where = f"= {shared[stage.id]}" if stage.id in shared else stage.dir
        out(f"  {action:<6} {stage.id:<36} {where}")
        if stage.id in est and stage.id not in shared:
            out(f"         ~ {est[stage.id].detail}")
        if action in ("run", "resume") and stage.call is None:
            out(f"         $ {shlex.join(launcher.command(stage))}")


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return ""


def run_stage(stage: Stage, launcher: Launcher, context: dict) -> None:
    """Run one stage to completion, its manifest marking the start and the end."""
    paths.makedirs(stage.dir)
    manifest.mark_started(stage)
    start = time.time()
    if stage.call is not None:
        stage.call(stage, context)
        manifest.mark_finished(stage, True, time.time() - start)
        return
    log = log_path(stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    outcome = launcher.run(stage, log)
    remote = paths.routed(stage.dir) or stage.dir
    if paths.is_remote(remote) and log.is_file():  # before the done-record, which comes last
        storage.upload(log.parent, remote, sorted(p.name for p in log.parent.iterdir()
                                                  if storage.RUNNER_FILE_PATTERN.fullmatch(p.name)))
    manifest.mark_finished(stage, outcome.returncode == 0, time.time() - start, {"returncode": outcome.returncode})
    if outcome.returncode != 0:
        shown = outcome.log or log
        raise UserError(f"stage {stage.id} failed ({outcome.failure}); its log is {shown}. Fix the cause and "
                        f"run the same command again: finished stages are skipped and this one resumes.\n"
                        f"--- last lines of {shown} ---\n{_tail(shown)}")


def run_stages(stages: list[Stage], launcher: Launcher, *, dry_run: bool = False, out: Callable = print,
               context: Optional[dict] = None, slice_cfg=None) -> dict[str, manifest.Status]:
    """Run what the plan says; returns the plan-time statuses."""
    status = statuses(stages, unreachable_ok=dry_run)
    print_plan(stages, launcher, status, out, slice_cfg)
    if dry_run:
        return status
    context = context if context is not None else {}
    context.setdefault("stages", stages)
    for i, stage in enumerate(stages, 1):
        if status[stage.id] == "done":
            continue
        if stage.call is None and manifest.stage_status(stage) == "done":  # shared with a stage just run
            continue
        verb = "resuming" if status[stage.id] == "resume" else "running"
        out(f"[{i}/{len(stages)}] {verb} {stage.id} ...")
        start = time.time()
        run_stage(stage, launcher, context)
        out(f"[{i}/{len(stages)}] {stage.id} done in {time.time() - start:.1f} s -> {stage.dir}")
    return status


def select(stages: list[Stage], only: Sequence[str]) -> list[Stage]:
    """The stages whose id contains one of `only`, plus everything they need."""
    if not only:
        return stages
    by_id = {s.id: s for s in stages}
    keep: set[str] = set()

    def need(sid: str) -> None:
        if sid not in keep:
            keep.add(sid)
            for d in by_id[sid].deps:
                need(d)

    for s in stages:
        if any(o in s.id for o in only):
            need(s.id)
    if not keep:
        raise UserError(f"--only {list(only)}: no stage matches (stages: {', '.join(by_id)})")
    return [s for s in stages if s.id in keep]


# ---------------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------------


def plan_experiment(cfg) -> list[Stage]:
    """The resolved stages of an ExperimentConfig (keys, folders, concrete commands)."""
    from msm_jax.experiment.collect import write_experiment_report
    from msm_jax.experiment.stages import build_stages, resolve

    return resolve(build_stages(cfg, report=write_experiment_report), cfg.out)


def missing_inputs(cfg) -> list[str]:
    """The experiment's own inputs (existing datasets, base model, tokenizer) that are not there."""
    from msm_jax.experiment.stages import resolve_file

    given = [(f"datasets.{n}.path", d.path) for n, d in cfg.datasets.items() if d.path]
    given += [("base_model", cfg.base_model), ("tokenizer.path", cfg.tokenizer.path if cfg.tokenizer else None)]
    return [f"{key}: {value} not found" for key, value in given
            if value and not paths.is_remote(value) and not paths.routed(value) and not Path(resolve_file(value)).exists()]


def check_same_experiment(cfg) -> None:
    """An output folder belongs to one experiment: refuse to write over another's experiment.yaml."""
    import yaml

    path = paths.join(cfg.out, "experiment.yaml")
    if not paths.exists(path):
        return
    try:
        previous = yaml.safe_load(paths.read_text(path))
    except (yaml.YAMLError, UnicodeDecodeError):
        previous = None
    name = previous.get("name") if isinstance(previous, dict) else None
    if name != cfg.name:
        raise UserError(f"{path}: {cfg.out} holds experiment {name!r}, not {cfg.name!r}; choose another out=")


def run_experiment(cfg, *, dry_run: bool = False, only: Sequence[str] = (), launcher: Optional[Launcher] = None,
                   out: Callable = print) -> dict:
    """Plan and run an experiment; returns the context (stages, report path)."""
    from msm_jax.config import to_yaml

    missing = missing_inputs(cfg)
    if missing and not dry_run and not only:
        raise UserError("the experiment's inputs are missing (nothing was run):\n  " + "\n  ".join(missing))
    for line in missing if dry_run else ():
        out(f"warning: {line}")
    stages = select(plan_experiment(cfg), only)
    context = {"config": cfg, "stages": stages}
    if not dry_run:
        check_same_experiment(cfg)
        paths.makedirs(cfg.out)
        paths.write_text(paths.join(cfg.out, "experiment.yaml"), to_yaml(cfg))
    start = time.time()
    run_stages(stages, launcher or Launcher(), dry_run=dry_run, out=out, context=context, slice_cfg=cfg.slice)
    if not dry_run:
        out(f"{cfg.name}: finished in {time.time() - start:.1f} s")
        if "report_path" in context:
            out(f"report: {context['report_path']}")
    return context


def make_launcher(kind: str, tpu, out_root: str, processes: int = 2, devices: int = 4) -> Launcher:
    """The local launcher, a local pod of `processes` x `devices` fake CPU devices, or the TPU
    one for a TpuLauncherConfig (whose stages must live on gs:// or the bucket mount)."""
    if kind == "local":
        return Launcher(env=compile_cache_env(out_root))
    if kind == "local-pod":
        if processes < 1 or devices < 1:
            raise UserError(f"--launcher local-pod: --processes ({processes}) and --devices-per-process "
                            f"({devices}) must be at least 1")
        return LocalPodLauncher(processes, devices)
    if tpu is None:
        raise UserError("--launcher tpu needs the TPU VM: --tpu-name NAME --tpu-zone ZONE (or a `tpu:` section)")
    if not (paths.is_remote(out_root) or str(out_root).startswith(BUCKET_MOUNT)):
        raise UserError(f"--launcher tpu: out {out_root!r} must be a folder every TPU worker sees: "
                        f"{BUCKET_MOUNT}BUCKET/... (tools/tpu/install.sh --bucket mounts it) or gs://BUCKET/...")
    route_bucket_mount(str(out_root))
    return TpuLauncher(tpu.name, tpu.zone, tpu.project, tpu.script)


def route_bucket_mount(out_root: str) -> None:
    """Where this machine does not mount /gcs/BUCKET (the workers do), read and write the
    runner's own files there through gs://BUCKET instead."""
    if not out_root.startswith(BUCKET_MOUNT):
        return
    bucket = out_root[len(BUCKET_MOUNT):].split("/", 1)[0]
    if bucket and not Path(BUCKET_MOUNT, bucket).is_dir():
        paths.route(f"{BUCKET_MOUNT}{bucket}/", f"gs://{bucket}/")


def run_experiment_file(path, overrides: Sequence[str] = (), *, dry_run: bool = False, only: Sequence[str] = (),
                        launcher: str = "local", tpu_overrides: Sequence[str] = (), processes: int = 2,
                        devices: int = 4) -> int:
    from msm_jax.config import from_dict, load_config, parse_override
    from msm_jax.experiment.config import ExperimentConfig, TpuLauncherConfig

    if not Path(path).is_file():
        raise UserError(f"{path}: experiment config not found")
    cfg = load_config(ExperimentConfig, path, overrides)
    tpu = None
    if tpu_overrides:
        fields = {k.split(".", 1)[1]: v for k, v in map(parse_override, tpu_overrides)}
        tpu = from_dict(TpuLauncherConfig, fields, {"": "command line"}, "tpu")
    run_experiment(cfg, dry_run=dry_run, only=only, launcher=make_launcher(launcher, tpu, cfg.out, processes, devices))
    return 0
