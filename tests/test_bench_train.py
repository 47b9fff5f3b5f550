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


def test_machine_load_reports_hypervisor_steal_between_two_readings(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 50 0 25 400 5 0 0 20 0 0\n")
    before = bench_train.cpu_ticks(str(stat))
    assert before == (40, 1000)
    stat.write_text("cpu  500 0 100 1300 10 0 0 90 0 0\n")  # 1,000 more ticks, 50 of them stolen
    load = bench_train.machine_load(before, bench_train.cpu_ticks(str(stat)))
    assert load["steal_pct"] == 5.0
    assert "hypervisor steal 5.0% of CPU time" in bench_train.describe_load(load)


def test_machine_load_is_unknown_without_proc_stat(tmp_path):
    assert bench_train.cpu_ticks(str(tmp_path / "missing")) is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert bench_train.cpu_ticks(str(tmp_path / "odd")) is None
    assert bench_train.machine_load(None, (1, 2))["steal_pct"] is None


def test_round_ratios_pair_each_round_of_ours_with_the_same_round_of_the_baseline():
    ours = [1.0, 2.0, 1.0, 1.0, 1.0]
    torch = [1.1, 2.2, 1.1, 1.1, 0.9]  # round 2 ran in a slow second for both stacks
    low, mid, high = bench_train.round_ratio_quartiles(ours, torch)
    assert (round(low, 6), round(mid, 6), round(high, 6)) == (1.1, 1.1, 1.1)
    assert bench_train.round_ratio_quartiles([2.0], [1.0]) == (0.5, 0.5, 0.5)


def test_sampling_benchmark_splits_each_call_into_first_token_and_decode_steps(capsys):
    import json

    import bench_sampling

    assert bench_sampling.phase_split(1.0, 0.37, 63) == {"first_token_s": 0.37, "decode_step_s": 0.01}
    bench_sampling.main(["--set", "num_layers=1", "--batch", "2", "--prompt-len", "8", "--new-tokens", "3",
                         "--chunk-size", "2", "--rounds", "1", "--no-recompute", "--json"])
    decoders = json.loads(capsys.readouterr().out.splitlines()[-1])["decoders"]
    assert set(decoders) == {"kv_cache", "transformers"}
    for row in decoders.values():
        assert row["token_agreement_with_kv_cache"] == 1.0
        assert row["first_token_agrees"] is True  # the one-token call starts the same continuation
        assert row["first_token_s"] > 0  # (not compared with the full call: a 3-token call is within timing noise)
        # the sampler ran 2 chunks of 2 steps (one of them in its one-token call), transformers 2 steps
        steps = 3 if row is decoders["kv_cache"] else 2
        assert abs(row["first_token_s"] + steps * row["decode_step_s"] - row["seconds"]) < 1e-9
