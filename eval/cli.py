"""`msm eval ...`: value generalization, agentic grid, reasoning tags, spec QA, Inspect tasks, report.

Each eval takes a YAML config (configs/eval/*.yaml) plus `key.sub=value` overrides, e.g.
`msm eval value configs/eval/value_generalization.yaml backend.path=RUN out_dir=RUN/eval/value`.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint or HF model", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True)
    for name, helptext in (("value", "value generalization: A/B pairs in held-out domains, both orders"),
                           ("agentic", "agentic-misalignment grid: sample, judge, check, rates"),
                           ("tags", "tag reasoning patterns in saved agentic transcripts"),
                           ("spec-qa", "open questions graded 1-10 against the spec"),
                           ("inspect", "a public Inspect task (agentic_misalignment) against `msm serve` on the model")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("config", help="YAML config (see configs/eval/)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        if name in ("agentic", "spec-qa"):
            p.add_argument("--judge-only", action="store_true",
                           help="do not load the model: judge and summarize what is already saved")
        p.set_defaults(func=_run_eval, eval_name=name)
    p = sub.add_parser("report", help="Markdown + PNG report comparing runs side by side")
    p.add_argument("runs", nargs="+", metavar="LABEL=EVAL_DIR", help="e.g. baseline=runs/base/eval")
    p.add_argument("--out", required=True, help="folder for report.md and the plots")
    p.set_defaults(func=_run_report)
    p = sub.add_parser("build-pairs", help="regenerate the cheese pair set from the demo world")
    p.add_argument("--world", default=None, help="world.json (default: data_pipeline/demo/world.json)")
    p.add_argument("--out", default="eval/data/cheese_pairs.jsonl")
    p.set_defaults(func=_run_build_pairs)


def _backend(cfg, judge_only: bool = False):
    if judge_only:
        return None
    from eval.backends import make_backend
    return make_backend(cfg.backend)


# While the leader judges (Message Batches can take hours), the other processes wait at the
# closing barrier; a process that dies still fails the stage within the heartbeat timeout.
LEADER_WAIT_S = 24 * 3600


def _run_eval(args) -> int:
    from msm_jax import distributed
    from msm_jax.config import load_config
    distributed.initialize()  # a stage started on every host joins one job (no-op in one process)
    name = args.eval_name
    if name == "value":
        from eval import value_generalization as mod
        cfg = load_config(mod.ValueGenConfig, args.config, args.overrides)
        mod.load_pairs(cfg.pairs, cfg.value)  # a bad pair file fails before the model loads
        summary = mod.evaluate(_backend(cfg), cfg)
    elif name == "agentic":
        from eval import agentic as mod
        cfg = load_config(mod.AgenticConfig, args.config, args.overrides)
        summary = mod.evaluate(_backend(cfg, args.judge_only), cfg)
    elif name == "spec-qa":
        from eval import spec_qa as mod
        cfg = load_config(mod.SpecQAConfig, args.config, args.overrides)
        summary = mod.evaluate(_backend(cfg, args.judge_only), cfg)
    elif name == "inspect":
        from eval import inspect_eval as mod
        cfg = load_config(mod.InspectConfig, args.config, args.overrides)
        summary = mod.evaluate(cfg)
    else:
        from eval import reasoning_tags as mod
        cfg = load_config(mod.ReasoningTagsConfig, args.config, args.overrides)
        summary = mod.evaluate(cfg) if distributed.is_leader() else None  # API calls only: once
    distributed.barrier(f"eval {name} finished", timeout_s=LEADER_WAIT_S)
    if distributed.is_leader():
        print(json.dumps(_headline(summary), indent=2))
    return 0


def _headline(summary: dict) -> dict:
    """The few numbers worth printing; the full summary is in summary.json."""
    keys = ("eval", "value_aligned", "position_bias", "mean_p_aligned", "average", "overall", "by_scenario")
    return {k: summary[k] for k in keys if k in summary}


def _run_report(args) -> int:
    from eval.report import write_report
    from msm_jax.errors import UserError
    runs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise UserError(f"run {item!r} must look like LABEL=EVAL_DIR")
        runs.append((label, path))
    print(f"wrote {write_report(runs, args.out)}")
    return 0


def _run_build_pairs(args) -> int:
    from pathlib import Path

    from eval.records import append_jsonl
    from eval.value_generalization import build_cheese_pairs
    pairs = build_cheese_pairs(Path(args.world) if args.world else None)
    out = Path(args.out)
    out.unlink(missing_ok=True)
    append_jsonl(out, pairs)
    print(f"wrote {len(pairs)} pairs to {out}")
    return 0
