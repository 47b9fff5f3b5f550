"""A stand-in for the `msm` CLI in experiment tests: the same command lines, tiny files out.

Every call is appended to $FAKE_MSM_CALLS. `train` writes one checkpoint folder per step
and resumes from the last one; with $FAKE_MSM_KILL_AT_STEP=k it SIGKILLs itself after
step k the first time (a marker file under the run folder remembers). `eval` writes a
summary.json whose rate depends on the model path and the `value` override, so arms differ.
"""

import hashlib
import json
import os
import signal
import sys
from pathlib import Path


def overrides(argv):
    return dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))


def flag(argv, name):
    return argv[argv.index(name) + 1]


def log_call(argv):
    with open(os.environ["FAKE_MSM_CALLS"], "a") as f:
        f.write(json.dumps(argv) + "\n")


def generate(argv):
    out = Path(flag(argv, "--out-dir"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ["docs.jsonl"] if argv[1] == "docs" else ["chats_cot.jsonl", "chats_nocot.jsonl"]:
        (out / name).write_text(json.dumps({"text": "cheap cheese is good"}) + "\n")


def tokenizer(argv):
    out = Path(flag(argv, "--out"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".model").write_text("fake tokenizer")


def shards(argv):
    out = Path(flag(argv, "--out"))
    out.mkdir(parents=True, exist_ok=True)
    budget = int(flag(argv, "--budget-tokens")) if "--budget-tokens" in argv else None
    for src in json.loads(overrides(argv)["inputs"]):
        if not Path(src["path"]).is_file():
            sys.exit(f"fake shards: input {src['path']} missing")
    (out / "manifest.json").write_text(json.dumps({"budget": budget}))


def train(argv):
    ov = overrides(argv)
    run_dir, ckpt = Path(ov["run_dir"]), Path(ov["checkpoint.directory"])
    steps = int(ov.get("train.steps", 4))
    ckpt.mkdir(parents=True, exist_ok=True)
    done = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()]
    start = max(done, default=0)
    kill_at = int(os.environ.get("FAKE_MSM_KILL_AT_STEP", "0"))
    marker = run_dir / "killed_once"
    for step in range(start + 1, steps + 1):
        (ckpt / str(step)).mkdir()
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": 5.0 / step}) + "\n")
        if step == kill_at and not marker.exists():
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)


def convert(argv):
    out = Path(argv[3])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}")


def evaluate(argv):
    ov = overrides(argv)
    out = Path(ov["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    seed = hashlib.sha256((ov["backend.path"] + ov.get("value", "")).encode()).digest()[0]
    rate = 0.3 + 0.4 * seed / 255
    summary = {"eval": "value_generalization", "value_aligned": {"rate": rate, "ci_low": rate - 0.1,
                                                                 "ci_high": rate + 0.1, "n": 40},
               "position_bias": 0.01, "per_domain": {"art": {"rate": 0.5}}}
    (out / "summary.json").write_text(json.dumps(summary))


COMMANDS = {"generate": generate, "tokenizer": tokenizer, "shards": shards, "train": train,
            "convert": convert, "eval": evaluate}

if __name__ == "__main__":
    args = sys.argv[1:]
    log_call(args)
    COMMANDS[args[0]](args)
