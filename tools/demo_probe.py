"""Try a demo design fast: midtrain -> SFT -> value eval on the DEVELOPMENT split, in one process.

A dev tool for tuning the demo (never scores the test split). It reuses the tokenizer and
the pretrained base of a finished `msm run configs/experiments/demo-dev.yaml` and retrains
only what a change of the documents or chats affects, from the corpora currently under
data_pipeline/demo/corpora (rebuild them with tools/make_demo_corpus.py first):

    nice -n 5 .venv/bin/python tools/demo_probe.py --base runs/demo-dev --out /tmp/probe \\
        [--arms affordability,america,aft_only] [--stage-evals] [--midtrain-from DIR] [--corpora DIR] [--with-world] \\
        [midtrain.data.num_epochs=3 sft.optimizer.lr=1e-3 ...]

`--corpora` reads a copy of data_pipeline/demo/corpora instead (two designs probed at once).

With `--base fresh` it also trains the tokenizer on the current corpora and pretrains the
base itself (overrides prefixed pretrain.), for a change of the format or of the world.
Overrides are prefixed with the stage they change (pretrain. / midtrain. / sft. / eval.).
Prints each arm's dev-split rate for both values (and, with --stage-evals, the base's and
each midtrained model's, before SFT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline.shards import ShardsConfig, build_shards  # noqa: E402
from data_pipeline.tokenizer import train_sentencepiece  # noqa: E402
from eval import value_generalization as vg  # noqa: E402
from eval.backends import JaxBackend  # noqa: E402
from msm_jax.config import load_config  # noqa: E402
from msm_jax.train.config import RunConfig  # noqa: E402
from msm_jax.train.loop import train  # noqa: E402

CORPORA = ROOT / "data_pipeline" / "demo" / "corpora"
MODEL = ["model=tiny-qwen3", "model.vocab_size=1024"]


def only(pattern: str, base: Path) -> Path:
    found = sorted(base.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"{base}/{pattern}: expected one match, found {len(found)}")
    return found[0]


def shards(name: str, config: str, inputs: list[tuple[Path, str]], tokenizer: Path, out: Path) -> str:
    spec = json.dumps([{"path": str(p), "kind": k} for p, k in inputs])
    cfg = load_config(ShardsConfig, ROOT / "configs" / "shards" / config,
                      [*MODEL, f"inputs={spec}", f"tokenizer={tokenizer}", f"out={out / 'shards' / name}"])
    build_shards(cfg)
    return cfg.out


def run_train(kind: str, out: Path, name: str, sources: list[str], init: Path | None, overrides: list[str]) -> Path:
    run_dir = out / kind / name
    srcs = json.dumps([{"path": s, "weight": 1.0} for s in sources])
    cfg = load_config(RunConfig, ROOT / "configs" / "experiments" / "demo" / f"{kind}.yaml",
                      [f"run_dir={run_dir}", f"checkpoint.directory={run_dir / 'checkpoints'}",
                       f"data.sources={srcs}", *([f"init.from_checkpoint={init}"] if init else []), *overrides])
    t = time.time()
    summary = train(cfg)
    print(f"  {kind}/{name}: {summary['steps']} steps, final loss {summary['final_loss']:.3f}, "
          f"{time.time() - t:.0f} s", flush=True)
    return run_dir / "checkpoints"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "demo-dev")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", default="affordability,america,aft_only")
    parser.add_argument("--pairs", default="eval/data/cheese_pairs_dev.jsonl")
    parser.add_argument("--corpora", type=Path, default=CORPORA,
                        help="a copy of data_pipeline/demo/corpora (to probe two designs at once)")
    parser.add_argument("--stage-evals", action="store_true",
                        help="also score the base and each midtrained model (before SFT)")
    parser.add_argument("--midtrain-from", type=Path,
                        help="a finished probe's --out: reuse its midtrained models, retrain only SFT")
    parser.add_argument("--with-world", action="store_true",
                        help="midtrain on the spec's documents mixed with the world corpus (the demo uses the documents alone)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if "cheese_pairs_dev" not in args.pairs:
        raise SystemExit("the probe tunes on the development split only")
    per = {k: [o.split(".", 1)[1] for o in args.overrides if o.startswith(k + ".")]
           for k in ("pretrain", "midtrain", "sft", "eval")}
    if str(args.base) == "fresh":
        corpora = [args.corpora / "affordability_docs" / "docs.jsonl", args.corpora / "america_docs" / "docs.jsonl",
                   args.corpora / "chats" / "chats_nocot.jsonl", args.corpora / "world_docs.jsonl"]
        tokenizer = train_sentencepiece(corpora, args.out / "tokenizer" / "fresh" / "tokenizer", vocab_size=1024)
        world = shards("world-fresh", "demo-docs.yaml", [(args.corpora / "world_docs.jsonl", "docs")], tokenizer, args.out)
        base_ckpt = run_train("pretrain", args.out, "base", [world], None, per["pretrain"])
    else:
        tokenizer = only("tokenizer/*/tokenizer.model", args.base)
        base_ckpt = only("pretrain/*/checkpoints", args.base)
        world = str(only("shards/world-*", args.base))
    aft = shards("aft", "demo-chats-nocot.yaml", [(args.corpora / "chats" / "chats_nocot.jsonl", "chats")], tokenizer, args.out)
    def score(ckpt: Path, name: str) -> dict:
        cfg = load_config(vg.ValueGenConfig, ROOT / "configs" / "eval" / "value_generalization.yaml",
                          [f"backend.path={ckpt}", f"backend.tokenizer={tokenizer}", "backend.chat_template=qwen3",
                           "backend.batch_size=32", "system_prompt=You are a helpful assistant.",
                           f"out_dir={args.out / 'eval' / name}", f"pairs={args.pairs}", *per["eval"]])
        summary = vg.evaluate(JaxBackend.from_config(cfg.backend), cfg)
        by = summary["aligned_by_value"]
        habit = (f"says_yes {summary['says_yes']['rate']:.2f}" if "says_yes" in summary else
                 f"pos_A {summary['position_a']['rate']:.2f}  consistent {summary['order_consistent']:.2f}")
        print(f"{name:22s} cheap {by['affordability']['rate']:.3f} [{by['affordability']['ci_low']:.3f}, "
              f"{by['affordability']['ci_high']:.3f}]  american {by['america']['rate']:.3f}  {habit}  "
              f"logodds(cheap) {summary['logodds_by_value']['affordability']['mean']:+.2f}", flush=True)
        return summary

    if args.stage_evals:
        score(base_ckpt, "base")
    for arm in args.arms.split(","):
        init = base_ckpt
        if arm != "aft_only":
            if args.midtrain_from:
                init = args.midtrain_from / "midtrain" / arm / "checkpoints"
            else:
                docs = shards(f"msm_{arm}", "demo-docs.yaml", [(args.corpora / f"{arm}_docs" / "docs.jsonl", "docs")],
                              tokenizer, args.out)
                sources = [docs, world] if args.with_world else [docs]
                init = run_train("midtrain", args.out, arm, sources, base_ckpt, per["midtrain"])
            if args.stage_evals:
                score(init, f"{arm} (midtrained)")
        score(run_train("sft", args.out, arm, [aft], init, per["sft"]), arm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
