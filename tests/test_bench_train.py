"""tools/bench_train.py: the timing protocol. Every variant runs in each round (the same
background load for all), and each timed step directly follows an untimed step of its own."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_train  # noqa: E402


def test_each_timed_step_follows_an_untimed_step_of_the_same_variant():
    calls = []

    def variant(name):
        def step():
            calls.append(name)
            return float(len(calls))  # the call's ordinal stands in for its seconds
        return step

    times = bench_train.interleaved_times([variant("jax"), variant("torch")], rounds=2)
    assert calls == ["jax", "jax", "torch", "torch"] * 2
    assert times == [[2.0, 6.0], [4.0, 8.0]]  # only the second call of each pair is kept


def test_attention_benchmark_prints_every_variant(capsys):
    import bench_attention

    bench_attention.main(["--batch", "1", "--seq", "16", "--heads", "4", "--kv-heads", "2", "--head-dim", "8",
                          "--rounds", "1"])
    rows = [line.split(" | ")[0].lstrip("| ") for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows == ["msm-jax xla_attention (segment mask)", "torch SDPA flash, causal", "torch SDPA flash, segment mask",
                    "torch SDPA math, causal", "torch SDPA math, segment mask"]
