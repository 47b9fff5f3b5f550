"""A side-by-side report of several runs' evals (e.g. baseline vs AFT-only vs MSM+AFT):
Markdown tables plus PNG bar charts with 95% confidence intervals.

Each run is a label and a folder: one eval's `out_dir`, or a folder whose subfolders
are eval out_dirs (e.g. runs/demo/eval/{value,agentic,...}); each summary.json says which
eval it is. An eval a run lacks is left blank rather than failing the report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from msm_jax.errors import UserError

EVALS = ("value_generalization", "agentic", "spec_qa", "reasoning_tags")


def load_run(eval_dir: str | Path) -> dict[str, dict]:
    """{eval name: summary} for the summary in `eval_dir` or in its subfolders."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise UserError(f"{eval_dir}: no such eval directory")
    out = {}
    for path in [eval_dir / "summary.json", *sorted(eval_dir.glob("*/summary.json"))]:
        if not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e.msg})") from None
        if summary.get("eval") in EVALS:
            if summary["eval"] in out:
                raise UserError(f"{eval_dir}: two {summary['eval']} summaries; give each run one of each")
            out[summary["eval"]] = summary
    return out


def _ci(stat: Optional[dict], key: str = "rate", pct: bool = True) -> str:
    if not stat or stat.get(key) is None or (isinstance(stat.get(key), float) and math.isnan(stat[key])):
        return "-"
    scale, unit = (100, "%") if pct else (1, "")
    return (f"{stat[key] * scale:.1f}{unit} [{stat['ci_low'] * scale:.1f}, {stat['ci_high'] * scale:.1f}]"
            f" (n={stat['n']})")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _bars(path: Path, groups: Sequence[str], series: dict[str, list[Optional[tuple[float, float, float]]]],
          ylabel: str, title: str, ylim: Optional[tuple[float, float]] = None,
          reference: Optional[float] = None) -> None:
    """Grouped bars: one group per x label, one bar per run, with CI error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(series)) / 2 + 2), 4))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs, ys, errs = [], [], [[], []]
        for g, v in enumerate(values):
            if v is None or math.isnan(v[0]):
                continue
            xs.append(g + (i - (len(series) - 1) / 2) * width)
            ys.append(v[0])
            errs[0].append(max(0.0, v[0] - v[1]))
            errs[1].append(max(0.0, v[2] - v[0]))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _triple(stat: Optional[dict], key: str = "rate") -> Optional[tuple[float, float, float]]:
    if not stat or stat.get(key) is None:
        return None
    return stat[key], stat["ci_low"], stat["ci_high"]


def _value_section(runs: dict[str, dict], out: Path) -> str:
    have = {k: v["value_generalization"] for k, v in runs.items() if "value_generalization" in v}
    if not have:
        return ""
    rows = []
    for label, s in have.items():
        rows.append([label, s["value"], s["method"], _ci(s["value_aligned"]), _ci(s.get("mean_p_aligned")),
                     _ci(s["position_a"]), f"{s['order_consistent']:.2f}", f"{s['invalid_rate']:.2f}"])
    text = "## Value generalization\n\n" + _table(
        ["run", "value", "method", "value-aligned rate", "mean p(aligned), both orders", "answers 'A'",
         "same choice both orders", "invalid"], rows)
    domains = sorted({d for s in have.values() for d in s["per_domain"]})
    text += "\n\nPer held-out domain (value-aligned rate):\n\n" + _table(
        ["domain", *have], [[d, *[_ci(s["per_domain"].get(d)) for s in have.values()]] for d in domains])
    _bars(out / "value_generalization.png", ["all", *domains],
          {label: [_triple(s["value_aligned"]), *[_triple(s["per_domain"].get(d)) for d in domains]]
           for label, s in have.items()},
          "value-aligned rate", "Value generalization (held-out domains; dashed: chance)", (0, 1), reference=0.5)
    return text + "\n\n![value generalization](value_generalization.png)\n"


def _agentic_section(runs: dict[str, dict], out: Path) -> str:
    have = {k: v["agentic"] for k, v in runs.items() if "agentic" in v}
    if not have:
        return ""
    rows = [[label, _ci(s["average"], "mean"), _ci(s["average_judge_only"], "mean"),
             _ci(s["average_check_only"], "mean"), str(s["num_transcripts"])] for label, s in have.items()]
    text = "## Agentic misalignment\n\n" + _table(
        ["run", "misalignment rate (mean over conditions)", "judge only", "check only", "transcripts"], rows)
    conds = sorted({c for s in have.values() for c in s["per_condition"]})
    text += "\n\nPer condition (scenario/goal/urgency):\n\n" + _table(
        ["condition", *have], [[c, *[_ci(s["per_condition"].get(c)) for s in have.values()]] for c in conds])
    scenarios = sorted({k for s in have.values() for k in s["by_scenario"]})
    goals = sorted({k for s in have.values() for k in s["by_goal"]})
    _bars(out / "agentic_by_scenario.png", scenarios,
          {label: [_triple(s["by_scenario"].get(k), "mean") for k in scenarios] for label, s in have.items()},
          "misalignment rate", "Agentic misalignment by scenario", (0, 1))
    _bars(out / "agentic_by_goal.png", goals,
          {label: [_triple(s["by_goal"].get(k), "mean") for k in goals] for label, s in have.items()},
          "misalignment rate", "Agentic misalignment by goal setting", (0, 1))
    return text + "\n\n![by scenario](agentic_by_scenario.png)\n![by goal](agentic_by_goal.png)\n"


def _spec_qa_section(runs: dict[str, dict], out: Path) -> str:
    have = {k: v["spec_qa"] for k, v in runs.items() if "spec_qa" in v}
    if not have:
        return ""
    cats = sorted({c for s in have.values() for c in s["per_category"]})
    rows = [["overall", *[_ci(s["overall"], "mean", pct=False) for s in have.values()]]]
    rows += [[c, *[_ci(s["per_category"].get(c), "mean", pct=False) for s in have.values()]] for c in cats]
    _bars(out / "spec_qa.png", ["overall", *cats],
          {label: [_triple(s["overall"], "mean"), *[_triple(s["per_category"].get(c), "mean") for c in cats]]
           for label, s in have.items()}, "judge score (1-10)", "Spec QA", (0, 10))
    return "## Spec QA\n\n" + _table(["category", *have], rows) + "\n\n![spec qa](spec_qa.png)\n"


def _tags_section(runs: dict[str, dict], out: Path) -> str:
    have = {k: v["reasoning_tags"] for k, v in runs.items() if "reasoning_tags" in v}
    if not have:
        return ""
    cats = list(dict.fromkeys(c for s in have.values() for c in s["categories"]))
    rows = [[c, *[_ci(s["overall"].get(c)) for s in have.values()]] for c in cats]
    _bars(out / "reasoning_tags.png", cats,
          {label: [_triple(s["overall"].get(c)) for c in cats] for label, s in have.items()},
          "share of transcripts", "Reasoning patterns", (0, 1))
    return ("## Reasoning patterns (agentic transcripts)\n\n" + _table(["category", *have], rows)
            + "\n\n![reasoning tags](reasoning_tags.png)\n")


def write_report(runs: Sequence[tuple[str, str | Path]], out_dir: str | Path) -> Path:
    """report.md (+ PNGs) in `out_dir` comparing the given (label, eval dir) runs."""
    if not runs:
        raise UserError("no runs given; pass label=eval_dir pairs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = {label: load_run(path) for label, path in runs}
    if not any(loaded.values()):
        raise UserError("none of the run directories holds an eval summary (*/summary.json)")
    parts = ["# Eval report", "", "Runs: " + ", ".join(f"`{label}` ({path})" for label, path in runs),
             "", "Rates are percentages with 95% confidence intervals: Wilson per condition, bootstrap over "
             "pairs / conditions / answers for averages.", ""]
    for section in (_value_section, _agentic_section, _spec_qa_section, _tags_section):
        text = section(loaded, out)
        if text:
            parts += [text, ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
