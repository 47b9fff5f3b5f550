"""`msm sweep`: grid expansion, stage sharing across runs, one table and CI curves."""

import csv
import math

import pytest

from experiment_fixtures import calls, fake_launcher, write_experiment
from msm_jax.cli import main as msm
from msm_jax.config import ConfigError, load_config
from msm_jax.experiment.collect import mean_with_ci
from msm_jax.experiment.config import SweepConfig
from msm_jax.experiment.sweep import curves, expand, run_sweep, shared_stages

SWEEP = """\
experiment: experiment.yaml
out: runs/sweep
overrides: [export=false]
axes:
  msm_tokens:
    values: [1000, 2000]
    set: ["shards.msm_a.budget_tokens={value}", "shards.msm_b.budget_tokens={value}"]
  aft_tokens:
    values: [500, 1000]
    set: ["shards.aft.budget_tokens={value}"]
metrics: [value_aligned]
tpu: {name: msm-v5p, zone: us-east5-a}
"""


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    write_experiment(folder)
    (folder / "sweep.yaml").write_text(SWEEP)
    return folder


@pytest.fixture
def in_sweep_dir(sweep_dir, monkeypatch):
    monkeypatch.chdir(sweep_dir)
    monkeypatch.setenv("FAKE_MSM_CALLS", str(sweep_dir / "calls.jsonl"))
    return sweep_dir


def load_sweep(folder, *overrides):
    return load_config(SweepConfig, folder / "sweep.yaml", overrides)


def test_grid_expands_to_every_combination_with_its_overrides(in_sweep_dir):
    runs = expand(load_sweep(in_sweep_dir))
    assert [r.name for r in runs] == ["msm_tokens=1000,aft_tokens=500", "msm_tokens=1000,aft_tokens=1000",
                                      "msm_tokens=2000,aft_tokens=500", "msm_tokens=2000,aft_tokens=1000"]
    assert runs[3].config.shards["msm_b"].budget_tokens == 2000 and runs[3].config.shards["aft"].budget_tokens == 1000
    assert all(r.config.out == "runs/sweep" and not r.config.report and not r.config.export for r in runs)


def test_runs_share_generation_shards_per_budget_and_midtraining_per_msm_budget(in_sweep_dir):
    merged = shared_stages(expand(load_sweep(in_sweep_dir)))
    kinds = [s.kind for s in merged]
    assert kinds.count("generate") == 3 and kinds.count("tokenizer") == 1
    assert kinds.count("shards") == 2 * 2 + 2  # two specs x two MSM budgets, two AFT budgets
    assert kinds.count("midtrain") == 2 * 2  # per spec and MSM budget, not per AFT budget
    assert kinds.count("sft") == 2 * 4 + 2  # the AFT-only control does not depend on the MSM budget
    ids = {s.id for s in merged}
    assert all(d in ids for s in merged for d in s.deps)


def test_sweep_runs_end_to_end_and_writes_table_and_curves(in_sweep_dir):
    lines = []
    report = run_sweep(load_sweep(in_sweep_dir), launcher=fake_launcher(), out=lines.append)
    assert lines[0].startswith("sweep: 4 runs, 60 stages of which 34 are distinct")
    assert len([c for c in calls(in_sweep_dir / "calls.jsonl") if c[0] == "train"]) == 14
    rows = list(csv.DictReader((report.parent / "results.csv").open()))
    aligned = [r for r in rows if r["metric"] == "value_aligned"]
    assert len(aligned) == 4 * 3  # runs x arms
    assert {(r["msm_tokens"], r["aft_tokens"]) for r in aligned} == {("1000", "500"), ("1000", "1000"),
                                                                     ("2000", "500"), ("2000", "1000")}
    png = report.parent / "curve_value_aligned.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "## value_aligned vs msm_tokens" in report.read_text()


def test_sweep_dry_run_renders_tpu_commands_per_stage(in_sweep_dir, capsys):
    assert msm(["sweep", str(in_sweep_dir / "sweep.yaml"), "--launcher", "tpu", "--dry-run"]) == 1
    assert "must be a folder every TPU worker sees" in capsys.readouterr().err
    assert msm(["sweep", str(in_sweep_dir / "sweep.yaml"), "out=gs://bucket/sweep", "--launcher", "tpu",
                "--dry-run"]) == 0
    out = capsys.readouterr().out
    train = next(line for line in out.splitlines() if " msm train " in line)
    assert "bash tools/tpu/run_stage.sh --name msm-v5p --zone us-east5-a --workers all -- msm train" in train
    assert "checkpoint.directory=gs://bucket/sweep/midtrain/" in train and "run_dir=gs://bucket/sweep/midtrain/" in train
    shards = next(line for line in out.splitlines() if " msm shards " in line)
    assert "--workers 0 --" in shards


def test_curves_average_seeds_with_an_interval_and_split_other_axes():
    sweep = SweepConfig(experiment="x.yaml", out="o", axes={
        "msm_tokens": _axis([1, 2]), "aft_tokens": _axis([5]), "seed": _axis([0, 1], numeric=False)})
    records = [{"msm_tokens": m, "aft_tokens": 5, "seed": s, "arm": "a", "metric": "v", "value": v,
                "ci_low": None, "ci_high": None} for m, s, v in [(1, 0, 0.2), (1, 1, 0.4), (2, 0, 0.6), (2, 1, 0.6)]]
    series = curves(records, sweep, "v")
    assert list(series) == ["a, aft_tokens=5"]
    (x1, m1, lo1, hi1), (x2, m2, lo2, hi2) = sorted(series["a, aft_tokens=5"])
    assert (x1, x2) == (1.0, 2.0) and m1 == pytest.approx(0.3) and m2 == pytest.approx(0.6)
    assert hi1 - m1 == pytest.approx(1.96 * math.sqrt(0.02 / 2)) and lo2 == hi2 == pytest.approx(0.6)


def test_single_replicate_keeps_the_evals_own_interval():
    assert mean_with_ci([(0.5, 0.4, 0.7)]) == (0.5, 0.4, 0.7)


def test_non_numeric_value_on_numeric_axis_is_a_config_error(in_sweep_dir):
    with pytest.raises(ConfigError, match="axes.msm_tokens: numeric axis has a non-numeric value"):
        load_sweep(in_sweep_dir, "axes.msm_tokens.values=[small, big]")


def _axis(values, numeric=True):
    from msm_jax.experiment.config import SweepAxis
    return SweepAxis(values=tuple(values), set=(), numeric=numeric)
