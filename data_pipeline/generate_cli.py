"""`msm generate docs|chats CONFIG [key=value ...]`: the two corpora of the method from a
Model Spec. Flags are shorthands for config overrides; the API key comes from the
environment variable named by llm.api_key_env and is never printed or stored."""

from __future__ import annotations

import json
import sys

HELP = {
    "docs": "MSM documents: spec -> sections -> document types -> ideas -> documents",
    "chats": "AFT chats: situations -> questions -> replies with reasoning -> judge",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate MSM documents or AFT chats from a Model Spec",
                                   description=__doc__)
    sub = parser.add_subparsers(dest="what", metavar="WHAT")
    for what in ("docs", "chats"):
        p = sub.add_parser(what, help=HELP[what], description=HELP[what])
        p.add_argument("config", help="YAML config (e.g. configs/generate/docs.yaml)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        p.add_argument("--spec", help="the Model Spec file (overrides spec=)")
        p.add_argument("--out-dir", help="output folder (overrides out_dir=)")
        p.add_argument("--backend", choices=("anthropic", "replay", "openai"), help="llm.backend")
        p.add_argument("--base-url", help="llm.base_url (a local server, a vLLM endpoint)")
        p.add_argument("--store", help="llm.store_dir: the answer store (reused, never re-bought)")
        p.add_argument("--max-spend", type=float, metavar="USD",
                       help="stop cleanly (exit 3) once the stage's estimated spend, over all its runs, reaches USD")
        p.add_argument("--batch", action="store_true", help="use the Message Batches API for bulk stages")
        p.add_argument("--preview", action="store_true", help="print the plan and its estimated cost; spend nothing")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if what == "docs":
            p.add_argument("--budget-tokens", type=int, metavar="N", help="generate until N accepted tokens")
        else:
            p.add_argument("--chats", type=int, metavar="N", help="number of chats to produce")
        p.set_defaults(func=run_generate, what=what)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def flag_overrides(args) -> list[str]:
    pairs = [("spec", args.spec), ("out_dir", args.out_dir), ("llm.backend", args.backend),
             ("llm.base_url", args.base_url), ("llm.store_dir", args.store),
             ("llm.max_spend_usd", args.max_spend), ("use_batch", True if args.batch else None),
             ("budget_tokens", getattr(args, "budget_tokens", None)), ("chats", getattr(args, "chats", None))]
    return [f"{key}={value}" if not isinstance(value, bool) else f"{key}=true"
            for key, value in pairs if value is not None]


def run_generate(args) -> int:
    from data_pipeline import aft_chats, msm_docs
    from data_pipeline.llm import make_client
    from msm_jax.config import load_config

    module = msm_docs if args.what == "docs" else aft_chats
    cls = msm_docs.DocsConfig if args.what == "docs" else aft_chats.ChatsConfig
    cfg = load_config(cls, args.config, list(args.overrides) + flag_overrides(args))
    if args.preview:
        plan = module.preview(cfg)
        for row in plan["stages"]:
            print(f"{row['stage']:<16} calls {row['calls']:>7}  in {row['input_tokens']:>11,}  "
                  f"out {row['output_tokens']:>11,}  ~${row['est_cost_usd']:.2f}")
        print(f"estimated total: ~${plan['est_total_usd']:.2f} (list prices, prompt cache on the spec"
              f"{', batch discount' if cfg.use_batch else ''}); nothing was spent")
        return 0
    client = make_client(cfg.llm)
    run = msm_docs.generate_documents if args.what == "docs" else aft_chats.generate_chats
    report = run(cfg, client, progress=not args.no_progress)
    print(json.dumps({k: report[k] for k in ("stopped", "calls_made", "calls_saved_by_store",
                                             "prompt_cache_read_share", "estimated_cost_usd", "gates")},
                     indent=1))
    print(f"wrote {cfg.out_dir}", file=sys.stderr)
    if report["stopped"].startswith("spend_limit"):
        return 3   # stopped by --max-spend: a rerun with a higher limit continues
    produced = report["documents"] if args.what == "docs" else report["chats"]
    if produced == 0:
        print(f"msm: error: generate {args.what} produced nothing (stopped: {report['stopped']}); "
              f"see the gates in {cfg.out_dir}", file=sys.stderr)
        return 1
    return 0
