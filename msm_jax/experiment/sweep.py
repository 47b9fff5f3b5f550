"""`msm sweep`: a grid of experiments that share every stage they can, then one table and
metric-vs-tokens curves.

Each grid point is the base experiment plus overrides. Stages are identified by their
key (hash of inputs and config), so the points share by construction whatever they have
in common: one generation per spec, one shard set per token budget (nested subsets: the
shards command selects budgets as prefixes of one seeded order), one midtraining per MSM
budget whatever the AFT budget, one AFT-only control whatever the MSM budget.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable, Optional, Sequence

from msm_jax.config import load_config, to_yaml
from msm_jax.errors import UserError
from msm_jax.experiment import collect, paths
from msm_jax.experiment.config import ExperimentConfig, SweepConfig
from msm_jax.experiment.runner import Launcher, make_launcher, plan_experiment, run_stages
from msm_jax.experiment.stages import LOCAL_MIRROR, Stage, resolve_file


@dataclasses.dataclass
class SweepRun:
    name: str  # e.g. "msm_tokens=20000,aft_tokens=5000"
    point: dict  # axis -> value
    config: ExperimentConfig
    stages: list[Stage]  # this run's own view of the (shared) stages


def point_overrides(sweep: SweepConfig, point: dict) -> list[str]:
    out = list(sweep.overrides)
    for axis, value in point.items():
        out += [s.replace("{value}", str(value)) for s in sweep.axes[axis].set]
    return out


def expand(sweep: SweepConfig) -> list[SweepRun]:
    """Every grid point as a resolved experiment whose stages live under the sweep's root."""
    experiment = resolve_file(sweep.experiment)
    if not Path(experiment).is_file():
        raise UserError(f"sweep experiment {sweep.experiment}: file not found")
    names = list(sweep.axes)
    runs = []
    for values in itertools.product(*(sweep.axes[n].values for n in names)):
        point = dict(zip(names, values))
        name = ",".join(f"{k}={v}" for k, v in point.items())
        overrides = point_overrides(sweep, point) + [f"out={sweep.out}", "report=false"]
        cfg = load_config(ExperimentConfig, experiment, overrides)
        runs.append(SweepRun(name, point, cfg, plan_experiment(cfg)))
    return runs


def shared_stages(runs: list[SweepRun]) -> list[Stage]:
    """The union of all runs' stages, each stage once (by key), in a valid order. Ids become
    the stage folders' names (KIND/NAME-KEY), unique across the sweep."""
    merged: dict[str, Stage] = {}
    for run in runs:
        ids = {s.id: unique_id(s) for s in run.stages}
        for stage in run.stages:
            uid = ids[stage.id]
            if uid not in merged:
                merged[uid] = dataclasses.replace(stage, id=uid, deps=[ids[d] for d in stage.deps])
    return list(merged.values())


def unique_id(stage: Stage) -> str:
    return f"{stage.kind}/{stage.dir.rstrip('/').rsplit('/', 1)[-1]}"


def sharing_summary(runs: list[SweepRun], merged: list[Stage]) -> str:
    total = sum(len(r.stages) for r in runs)
    kinds = {}
    for stage in merged:
        kinds[stage.kind] = kinds.get(stage.kind, 0) + 1
    per_kind = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return f"sweep: {len(runs)} runs, {total} stages of which {len(merged)} are distinct ({per_kind})"


# ---------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------


def collect_records(runs: list[SweepRun]) -> list[dict]:
    """One record per (run, arm, eval, metric) with the run's axis values."""
    records = []
    for run in runs:
        for stage in run.stages:
            if stage.kind != "eval":
                continue
            _, eval_name, arm = stage.id.split("/", 2)
            summary = collect.read_summary(stage.dir)
            if summary is None:
                continue
            label = run.config.arms[arm].label or arm
            for metric, (value, lo, hi, n) in collect.flatten_summary(summary).items():
                records.append({**run.point, "run": run.name, "arm": label, "eval": eval_name, "metric": metric,
                                "value": value, "ci_low": lo, "ci_high": hi, "n": n})
    return records


def x_axis_of(sweep: SweepConfig) -> Optional[str]:
    if sweep.x_axis is not None:
        return sweep.x_axis
    return next((n for n, a in sweep.axes.items() if a.numeric and n not in sweep.pool), None)


def curves(records: list[dict], sweep: SweepConfig, metric: str) -> dict[str, list[tuple]]:
    """series label -> [(x, mean, lo, hi)]: one series per arm and per value of every axis
    that is neither on the x axis nor pooled as a replicate."""
    x_axis = x_axis_of(sweep)
    groups: dict[tuple, list[tuple]] = {}
    for r in records:
        if r["metric"] != metric:
            continue
        other = tuple((a, r[a]) for a in sweep.axes if a != x_axis and a not in sweep.pool)
        key = (r["arm"], other, float(r[x_axis]))
        groups.setdefault(key, []).append((r["value"], r["ci_low"], r["ci_high"]))
    series: dict[str, list[tuple]] = {}
    for (arm, other, x), points in groups.items():
        label = ", ".join([arm] + [f"{a}={v}" for a, v in other])
        series.setdefault(label, []).append((x, *collect.mean_with_ci(points)))
    return series


def write_sweep_report(sweep: SweepConfig, runs: list[SweepRun]) -> Path:
    out = Path(sweep.out) if not paths.is_remote(sweep.out) else Path(LOCAL_MIRROR) / sweep.out.split("://", 1)[1]
    out = out / "report"
    out.mkdir(parents=True, exist_ok=True)
    records = collect_records(runs)
    axes = list(sweep.axes)
    columns = axes + ["arm", "eval", "metric", "value", "ci_low", "ci_high", "n"]
    collect.write_csv(out / "results.csv", columns, [[r[c] for c in columns] for r in records])
    shown = [r for r in records if r["metric"] in sweep.metrics]
    rows = [[*(r[a] for a in axes), r["arm"], r["metric"], collect.fmt(r["value"], r["ci_low"], r["ci_high"])]
            for r in shown]
    lines = ["# Sweep results", "", collect.markdown_table(axes + ["arm", "metric", "value [95% CI]"], rows)
             if rows else "No eval results yet.", "", f"All metrics: {out / 'results.csv'}", ""]
    x_axis = x_axis_of(sweep)
    for metric in sweep.metrics if x_axis else ():
        series = curves(records, sweep, metric)
        if series:
            png = collect.plot_curves(series, metric, x_axis, out / f"curve_{metric.replace('/', '_')}.png")
            lines += [f"## {metric} vs {x_axis}", "", f"![{metric}]({png.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def run_sweep(sweep: SweepConfig, *, dry_run: bool = False, launcher: Optional[Launcher] = None,
              out: Callable = print) -> Optional[Path]:
    runs = expand(sweep)
    merged = shared_stages(runs)
    out(sharing_summary(runs, merged))
    if not dry_run:
        paths.makedirs(sweep.out)
        paths.write_text(paths.join(sweep.out, "sweep.yaml"), to_yaml(sweep))
    run_stages(merged, launcher or Launcher(), dry_run=dry_run, out=out, slice_cfg=runs[0].config.slice)
    if dry_run:
        return None
    report = write_sweep_report(sweep, runs)
    out(f"report: {report}")
    return report


def run_sweep_file(path, overrides: Sequence[str] = (), *, dry_run: bool = False, launcher: str = "local",
                   processes: int = 2, devices: int = 4) -> int:
    if not Path(path).is_file():
        raise UserError(f"{path}: sweep config not found")
    sweep = load_config(SweepConfig, path, overrides)
    run_sweep(sweep, dry_run=dry_run, launcher=make_launcher(launcher, sweep.tpu, sweep.out, processes, devices))
    return 0
