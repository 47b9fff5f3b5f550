"""`msm tokenizer train` and `msm shards`: the commands of the tokenize-and-pack stage."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> None:
    tok = subparsers.add_parser("tokenizer", help="train a SentencePiece tokenizer for tiny demo models")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    train = tok_sub.add_parser(
        "train", help="train a SentencePiece model on text/JSONL files",
        description="Train a SentencePiece model (BPE by default) on .txt lines or the text / chat contents "
                    "of .jsonl files. The chat-template special tokens (Llama 3 headers, ChatML, <think>) are "
                    "added as user-defined symbols, so tiny models can use the real templates.")
    train.add_argument("inputs", nargs="+", type=Path, help="corpus files (.txt or .jsonl)")
    train.add_argument("--out", type=Path, required=True, help="output path; writes OUT.model")
    train.add_argument("--vocab-size", type=int, default=2000)
    train.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    train.add_argument("--symbol", action="append", default=[], help="extra user-defined symbol (repeatable)")
    train.set_defaults(func=run_tokenizer_train)
    tok.set_defaults(func=lambda args: tok.print_help() or 2)

    shards = subparsers.add_parser(
        "shards", help="tokenize, template and pack JSONL into ArrayRecord shards",
        description="Build packed ArrayRecord shards plus manifest.json from docs/chats JSONL, as configured "
                    "in CONFIG.yaml (see configs/shards/). key=value overrides follow the config file.")
    shards.add_argument("config", type=Path, help="shard config YAML")
    shards.add_argument("overrides", nargs="*", help="config overrides like seq_len=1024 chat.reasoning=drop")
    shards.add_argument("--out", help="output shard directory (overrides `out`)")
    shards.add_argument("--budget-tokens", type=int, help="exact nested token budget (overrides `budget_tokens`)")
    shards.add_argument("--skip-bad", action="store_true", help="skip and count malformed lines instead of failing")
    shards.add_argument("--force", action="store_true", help="rebuild even when the manifest says up to date")
    shards.add_argument("--overwrite", action="store_true",
                        help="write into an --out folder that holds other files (they are left untouched)")
    shards.set_defaults(func=run_shards)


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from data_pipeline.tokenizer import train_sentencepiece
    from msm_jax.errors import UserError

    for path in args.inputs:
        if not path.is_file():
            raise UserError(f"{path}: corpus file not found")
    out_prefix = args.out.with_suffix("") if args.out.suffix == ".model" else args.out
    path = train_sentencepiece(args.inputs, out_prefix, vocab_size=args.vocab_size, model_type=args.model_type,
                               extra_symbols=args.symbol)
    from data_pipeline.tokenizer import load_tokenizer

    print(f"wrote {path} (vocab size {load_tokenizer(path).vocab_size})")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from data_pipeline.shards import ShardsConfig, build_shards
    from msm_jax.config import load_config

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"out={json.dumps(args.out)}")
    if args.budget_tokens is not None:
        overrides.append(f"budget_tokens={args.budget_tokens}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    cfg = load_config(ShardsConfig, args.config, overrides)
    manifest = build_shards(cfg, force=args.force, overwrite=args.overwrite)
    counts, overlong = manifest["counts"], manifest["overlong"]
    dropped = (f", {overlong['dropped']} over-long dropped ({overlong['tokens_dropped']} tokens)"
               if overlong["dropped"] else "")
    print(f"{cfg.out}: {manifest['num_rows']} rows of {manifest['seq_len']} tokens, "
          f"{counts['documents']} documents, {counts['tokens']} tokens ({counts['loss_tokens']} trained), "
          f"packing efficiency {manifest['packing_efficiency']:.4f}{dropped}")
    skipped = sum(i["skipped"] for i in manifest["inputs"])
    if skipped:
        print(f"skipped {skipped} bad lines: {[i['skipped_by_reason'] for i in manifest['inputs']]}")
    if manifest["budget"]:
        b = manifest["budget"]
        print(f"budget: {b['selected_tokens']} tokens selected for {b['requested_tokens']} requested")
    return 0
