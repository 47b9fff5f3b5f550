"""Results of finished stages: eval summaries flattened into one table, loss curves of the
train stages, and (for sweeps) metric-vs-tokens curves with confidence intervals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from msm_jax.errors import UserError
from msm_jax.experiment import paths
from msm_jax.train.metrics import METRICS_FILE, read_metrics

SUMMARY_FILE = "summary.json"  # what `msm eval` writes into its out_dir
TRAIN_KINDS = ("pretrain", "midtrain", "sft")  # panel order of the loss curves: the data path's
SKIPPED_SUMMARY_KEYS = ("per_domain", "per_domain_by_value", "by_scenario", "per_question")  # too fine-grained for one table


def rate_of(value: Any) -> Optional[tuple[float, Optional[float], Optional[float], Optional[int]]]:
    """(value, ci_low, ci_high, n) of a summary entry: a number or a {rate, ci_low, ci_high} dict."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value, None, None, None
    if isinstance(value, dict):
        for key in ("rate", "mean", "value"):
            if isinstance(value.get(key), (int, float)) and not isinstance(value.get(key), bool):
                return (float(value[key]), value.get("ci_low"), value.get("ci_high"),
                        value.get("n", value.get("num_pairs")))
    return None


def flatten_summary(summary: dict, prefix: str = "", depth: int = 2) -> dict[str, tuple]:
    """metric name -> (value, ci_low, ci_high, n), for every rate or number up to `depth` levels."""
    out = {}
    for key, value in summary.items():
        if key in SKIPPED_SUMMARY_KEYS:
            continue
        name = f"{prefix}{key}"
        rate = rate_of(value)
        if rate is not None:
            out[name] = rate
        elif isinstance(value, dict) and depth > 1:
            out.update(flatten_summary(value, f"{name}.", depth - 1))
    return out


def read_summary(eval_dir: str) -> Optional[dict]:
    """The eval's summary.json: in its out_dir, or in the one subfolder the eval named after itself."""
    path = paths.join(eval_dir, SUMMARY_FILE)
    if not paths.exists(path):
        found = [n for n in paths.list_files(eval_dir) if n.count("/") == 1 and n.endswith(f"/{SUMMARY_FILE}")]
        if not found:
            return None
        path = paths.join(eval_dir, found[0])
    try:
        return json.loads(paths.read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt eval summary ({e}); re-run its eval stage") from None


def train_metrics(run_dir: str) -> list[dict]:
    """A train stage's metrics.jsonl records, read through gs:// where the stage folder is there."""
    path = paths.join(run_dir, METRICS_FILE)
    if not paths.exists(path):
        return []
    return read_metrics(Path(paths.local_copy(path)).parent)


def fmt(value: float, lo: Optional[float], hi: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    text = f"{value:.3f}"
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not math.isnan(lo):
        text += f" [{lo:.3f}, {hi:.3f}]"
    return text


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------


def plot_loss_curves(curves: dict[str, list[dict]], path: Path) -> Optional[Path]:
    """One panel per train kind (midtrain, sft), one line per arm: loss vs step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {name.split("/")[0] for name, recs in curves.items() if recs}
    kinds = [k for k in TRAIN_KINDS if k in present]
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, records in sorted(curves.items()):
            if name.split("/")[0] != kind:
                continue
            points = [(r["step"], r["loss"]) for r in records if "step" in r and "loss" in r]
            if points:
                ax.plot(*zip(*points), label=name.split("/", 1)[1])
            evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
            if evals:
                ax.plot(*zip(*evals), "o--", label=f"{name.split('/', 1)[1]} (eval)")
        ax.set_title(kind)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# How the value eval's value tags read in a plot legend (other tags are shown as they are).
VALUE_LABELS = {"affordability": "the cheap, imported option (affordability's pick)",
                "america": "the expensive, American-made option (America's pick)"}


def value_label(value: str) -> str:
    return VALUE_LABELS.get(value, f"the option favoured by {value}")


def plot_value_choices(summaries: dict[str, dict], path: Path) -> Optional[Path]:
    """For value-generalization evals (pairs that set one value against another): each arm's
    share of choices of the option each value favours, with 95% intervals, and the same
    domain by domain. Readable without the README: axis titles and legend say what is counted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {arm: s for arm, s in summaries.items() if len(s.get("aligned_by_value", {})) >= 2}
    if not summaries:
        return None
    values = sorted({v for s in summaries.values() for v in s["aligned_by_value"]})
    arms = list(summaries)
    first = values[0]
    domains = sorted({d for s in summaries.values() for d in s.get("per_domain_by_value", {})})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    width = 0.8 / len(values)
    for j, value in enumerate(values):
        rates = [rate_of(summaries[a]["aligned_by_value"].get(value)) or (math.nan, None, None, None) for a in arms]
        ys = [r[0] for r in rates]
        errs = [[max(0.0, y - (lo if lo is not None else y)) for y, (_, lo, _, _) in zip(ys, rates)],
                [max(0.0, (hi if hi is not None else y) - y) for y, (_, _, hi, _) in zip(ys, rates)]]
        xs = [i + (j - (len(values) - 1) / 2) * width for i in range(len(arms))]
        left.bar(xs, ys, width, yerr=errs, capsize=4, label=value_label(value))
        for x, y in zip(xs, ys):
            left.text(x, 0.02, f"{y:.2f}", ha="center", va="bottom", fontsize=8, color="white")
    left.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    left.set_xticks(range(len(arms)))
    left.set_xticklabels(arms, fontsize=8)
    left.set_ylim(0, 1.15)
    left.set_ylabel("share of the arm's choices over the held-out pairs")
    left.set_title("Held-out pairs: which option each arm picks\n(error bars: 95% interval, bootstrap over items)",
                   fontsize=10)
    left.legend(fontsize=8, loc="upper center", ncol=1)
    for i, arm in enumerate(arms):
        by_domain = summaries[arm].get("per_domain_by_value", {})
        rates = [rate_of(by_domain.get(d, {}).get(first)) or (math.nan, None, None, None) for d in domains]
        ys = [r[0] for r in rates]
        errs = [[max(0.0, y - (lo if lo is not None else y)) for y, (_, lo, _, _) in zip(ys, rates)],
                [max(0.0, (hi if hi is not None else y) - y) for y, (_, _, hi, _) in zip(ys, rates)]]
        xs = [k + (i - (len(arms) - 1) / 2) * 0.2 for k in range(len(domains))]
        right.errorbar(xs, ys, yerr=errs, fmt="o", capsize=3, label=arm)
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    right.set_xticks(range(len(domains)))
    right.set_xticklabels(domains, fontsize=8)
    right.set_ylim(-0.05, 1.05)
    right.set_ylabel(f"share of choices of {value_label(first).split(' (')[0]}")
    right.set_title(f"Per held-out domain: how often each arm picks {value_label(first)}", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_domain_table(summaries: dict[str, dict]) -> Optional[str]:
    """Markdown: one row per (domain, value), one column per arm, rates with 95% intervals."""
    have = {arm: s["per_domain_by_value"] for arm, s in summaries.items() if s.get("per_domain_by_value")}
    if not have:
        return None
    keys = sorted({(d, v) for by in have.values() for d, per in by.items() for v in per})
    rows = []
    for domain, value in keys:
        cells = [fmt(*(rate_of(by.get(domain, {}).get(value)) or (None, None, None, None))[:3]) for by in have.values()]
        rows.append([domain, value, *cells])
    return markdown_table(["domain", "option favoured by", *have], rows)


def mean_with_ci(points: list[tuple[float, Optional[float], Optional[float]]]) -> tuple[float, float, float]:
    """Across replicates (seeds): mean and a normal-approximation 95% interval of the mean.
    A single replicate keeps the interval its eval reported (if any)."""
    values = [p[0] for p in points]
    mean = sum(values) / len(values)
    if len(values) == 1:
        lo, hi = points[0][1], points[0][2]
        return mean, (mean if lo is None else lo), (mean if hi is None else hi)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    half = 1.96 * math.sqrt(var / len(values))
    return mean, mean - half, mean + half


def plot_curves(series: dict[str, list[tuple[float, float, float, float]]], metric: str, x_label: str,
                path: Path) -> Path:
    """metric vs x, one line per series, shaded 95% intervals. Points are (x, mean, lo, hi)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in sorted(series.items()):
        points = sorted(points)
        xs, ys, los, his = zip(*points)
        ax.plot(xs, ys, "o-", label=label)
        ax.fill_between(xs, los, his, alpha=0.2)
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    if all(x > 0 for pts in series.values() for x, *_ in pts):
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# The experiment report (a Python stage of `msm run`)
# ---------------------------------------------------------------------------------------


def eval_summaries(stages, cfg) -> dict[str, dict[str, dict]]:
    """eval name -> arm label -> summary, for every finished eval stage."""
    out: dict[str, dict[str, dict]] = {}
    for stage in stages:
        if stage.kind != "eval":
            continue
        _, eval_name, arm = stage.id.split("/", 2)
        summary = read_summary(stage.dir)
        if summary is not None:
            out.setdefault(eval_name, {})[cfg.arms[arm].label or arm] = summary
    return out


def experiment_rows(stages, cfg) -> tuple[list[str], list[list[str]], list[dict]]:
    """(header, markdown rows, raw records) of every eval stage's summary."""
    records = []
    for stage in stages:
        if stage.kind != "eval":
            continue
        _, eval_name, arm = stage.id.split("/", 2)
        summary = read_summary(stage.dir)
        if summary is None:
            continue
        label = cfg.arms[arm].label or arm
        for metric, (value, lo, hi, n) in flatten_summary(summary).items():
            records.append({"arm": label, "eval": eval_name, "metric": metric, "value": value,
                            "ci_low": lo, "ci_high": hi, "n": n})
    metrics = list(dict.fromkeys((r["eval"], r["metric"]) for r in records))
    arms = list(dict.fromkeys(r["arm"] for r in records))
    by = {(r["arm"], r["eval"], r["metric"]): r for r in records}
    header = ["arm"] + [f"{e}: {m}" if len({x[0] for x in metrics}) > 1 else m for e, m in metrics]
    rows = []
    for arm in arms:
        row = [arm]
        for e, m in metrics:
            r = by.get((arm, e, m))
            row.append(fmt(r["value"], r["ci_low"], r["ci_high"]) if r else "")
        rows.append(row)
    return header, rows, records


def overlap(a: dict, b: dict) -> Optional[bool]:
    """Whether two records' 95% intervals overlap (None when either has no interval)."""
    if any(not isinstance(r.get(k), (int, float)) for r in (a, b) for k in ("ci_low", "ci_high")):
        return None
    return a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"]


def comparison(records: list[dict], headlines: dict[str, Optional[str]]) -> list[str]:
    """Plain sentences on the headline metric of each eval (default: its first): which arms differ."""
    lines = []
    for eval_name in dict.fromkeys(r["eval"] for r in records):
        rows = [r for r in records if r["eval"] == eval_name]
        metric = headlines.get(eval_name) or rows[0]["metric"]
        rows = [r for r in rows if r["metric"] == metric]
        pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
        apart = [f"{a['arm']} vs {b['arm']}" for a, b in pairs if overlap(a, b) is False]
        if not pairs:
            continue
        if apart:
            lines.append(f"- {eval_name} / {metric}: the 95% intervals do not overlap for {'; '.join(apart)}.")
        else:
            lines.append(f"- {eval_name} / {metric}: every pair of arms has overlapping 95% intervals, so this "
                         "run shows no difference between the arms on it.")
    return lines


def write_experiment_report(stage, context: dict) -> Path:
    """report.md with the results table, loss curves and where every stage's output lives."""
    from msm_jax import storage

    cfg, stages = context["config"], context["stages"]
    staged = storage.output_dir(paths.routed(stage.dir) or stage.dir)  # gs://: uploaded at the end
    out = staged.path
    out.mkdir(parents=True, exist_ok=True)
    header, rows, records = experiment_rows(stages, cfg)
    write_csv(out / "results.csv", ["arm", "eval", "metric", "value", "ci_low", "ci_high", "n"],
              [[r[k] for k in ("arm", "eval", "metric", "value", "ci_low", "ci_high", "n")] for r in records])
    curves = {s.id if "/" in s.id else f"{s.id}/{s.id}": train_metrics(s.dir) for s in stages if s.kind in TRAIN_KINDS}
    plot = plot_loss_curves(curves, out / "loss_curves.png")
    lines = [f"# {cfg.name}", "", "## Results", ""]
    lines.append(markdown_table(header, rows) if rows else "No eval results yet.")
    lines += ["", "Values are rates with 95% confidence intervals in brackets (from `msm eval`).", ""]
    lines += comparison(records, {name: ev.headline for name, ev in cfg.evals.items()}) + [""]
    for eval_name, summaries in eval_summaries(stages, cfg).items():
        plot_path = plot_value_choices(summaries, out / f"choices_{eval_name}.png")
        table = per_domain_table(summaries)
        if plot_path or table:
            lines += [f"## {eval_name}: choices by value and domain", ""]
        if plot_path:
            lines += [f"![choices]({plot_path.name})", ""]
        if table:
            lines += [table, ""]
    if cfg.notes:
        lines += ["## What the arms measure", "", cfg.notes.strip(), ""]
    lines += ["## Loss curves", "", "![loss curves](loss_curves.png)" if plot else "No train metrics found.", ""]
    lines += ["## Stages", "", markdown_table(["stage", "folder"], [[s.id, s.dir] for s in stages if s is not stage])]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    staged.commit()
    context["report_path"] = report if not staged.remote else paths.join(stage.dir, report.name)
    return report
