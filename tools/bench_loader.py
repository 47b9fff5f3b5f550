"""Loader throughput next to what training consumes.

    python tools/bench_loader.py [--shards DIR ...] [--batch 8] [--seq-len 1024] [--steps 200]
                                 [--train-step-seconds 0.57]

Without --shards it writes synthetic packed shards to a temporary folder. It times, in
the same run: raw ArrayRecord reads in a shuffled order (baseline), `StepLoader.batch(step)` called in the
foreground, and the Grain iterator with background prefetch threads; then prints
sequences/s, tokens/s and how many train steps per second each could feed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import grain
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipeline.loader import LoaderConfig, SourceConfig, make_train_loader  # noqa: E402
from data_pipeline.shards import write_rows  # noqa: E402


def synthetic_shards(directory: Path, num_rows: int, seq_len: int) -> str:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(num_rows):
        row = np.zeros((4, seq_len), np.int32)
        row[0] = rng.integers(1, 32000, seq_len)
        row[1] = np.repeat(np.arange(1, 5), seq_len // 4 + 1)[:seq_len]
        row[2] = np.arange(seq_len) % (seq_len // 4 + 1)
        row[3] = 1
        rows.append(row)
    files = write_rows(rows, directory, rows_per_file=4096)
    (directory / "manifest.json").write_text(json.dumps({"seq_len": seq_len, "files": files, "num_rows": num_rows}))
    return str(directory)


def timed(fn, steps: int) -> float:
    fn(0)  # warm-up: opens readers, builds permutations
    start = time.perf_counter()
    for step in range(1, steps + 1):
        fn(step)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="*", help="shard directories (default: synthetic)")
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows per step)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rows", type=int, default=4096, help="rows of synthetic shards")
    parser.add_argument("--prefetch", type=int, default=2, help="background threads of the Grain iterator")
    parser.add_argument("--train-step-seconds", type=float, default=0.57,
                        help="seconds per train step to compare with (FACTS.md: 5.3M-param model, 1 CPU device)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        paths = args.shards or [synthetic_shards(Path(tmp) / "shards", args.rows, args.seq_len)]
        cfg = LoaderConfig(sources=tuple(SourceConfig(path=p) for p in paths), prefetch=args.prefetch)
        loader = make_train_loader(cfg, global_batch=args.batch, seq_len=args.seq_len, seed=0)
        first = json.loads((Path(paths[0]) / "manifest.json").read_text())
        source = grain.sources.ArrayRecordDataSource([str(Path(paths[0]) / f) for f in first["files"]])

        order = np.random.default_rng(0).permutation(len(source))

        def raw(step: int) -> None:  # the same random access pattern, no loader logic
            for r in range(step * args.batch, (step + 1) * args.batch):
                np.frombuffer(source[int(order[r % len(source)])], dtype="<i4")

        iterator = loader.iterator()
        results = {
            "raw shuffled ArrayRecord reads (baseline)": timed(raw, args.steps),
            "StepLoader.batch(step)": timed(loader.batch, args.steps),
            f"Grain iterator, {args.prefetch} prefetch threads": timed(lambda _: next(iterator), args.steps),
        }

    tokens_per_step = args.batch * args.seq_len
    train_tps = tokens_per_step / args.train_step_seconds
    print(f"batch {args.batch} x seq_len {args.seq_len} = {tokens_per_step} tokens per step; "
          f"training consumes {args.batch / args.train_step_seconds:,.0f} seq/s = {train_tps:,.0f} tokens/s "
          f"at {args.train_step_seconds} s/step")
    baseline = next(iter(results.values()))
    for name, seconds in results.items():
        tps = tokens_per_step / seconds
        print(f"{name:40s} {args.batch / seconds:10,.0f} seq/s {tps:14,.0f} tokens/s  "
              f"{baseline / seconds:5.2f}x baseline  {tps / train_tps:8.1f}x what training consumes")


if __name__ == "__main__":
    main()
