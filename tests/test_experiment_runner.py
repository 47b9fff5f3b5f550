"""`msm run`: stage graph, manifests, skipping, resume after a kill, dry-run, report."""

import json

import pytest

from experiment_fixtures import calls, fake_launcher, load_experiment, write_experiment
from msm_jax.cli import main as msm
from msm_jax.config import ConfigError, load_config
from msm_jax.errors import UserError
from msm_jax.experiment import manifest
from msm_jax.experiment.config import ExperimentConfig
from msm_jax.experiment.runner import plan_experiment, run_experiment


@pytest.fixture
def exp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_MSM_CALLS", str(tmp_path / "calls.jsonl"))
    write_experiment(tmp_path)
    return tmp_path


def run(folder, *overrides, **kw):
    lines = []
    ctx = run_experiment(load_experiment(folder, *overrides), launcher=fake_launcher(), out=lines.append, **kw)
    return ctx, lines


def commands(folder):
    return [" ".join(c[:2]) for c in calls(folder / "calls.jsonl")]


def test_plan_orders_stages_along_the_data_path_for_every_arm(exp):
    ids = [s.id for s in plan_experiment(load_experiment(exp))]
    assert ids[:4] == ["generate/docs_a", "generate/docs_b", "generate/chats", "tokenizer"]
    for arm in ("a", "b"):
        order = [ids.index(f"{k}/{arm}") for k in ("midtrain", "sft", "export", "eval/value")]
        assert order == sorted(order)
    assert "midtrain/aft_only" not in ids and "sft/aft_only" in ids
    assert ids[-1] == "report"


def test_sft_initialises_from_its_arms_midtraining_checkpoints(exp):
    stages = {s.id: s for s in plan_experiment(load_experiment(exp))}
    sft_a = " ".join(stages["sft/a"].argv)
    assert f"init.from_checkpoint={stages['midtrain/a'].dir}/checkpoints" in sft_a
    assert "init.from_checkpoint" not in " ".join(stages["sft/aft_only"].argv)
    assert stages["shards/aft"].dir in sft_a


def test_arms_with_identical_sft_inputs_differ_only_through_their_midtraining(exp):
    stages = {s.id: s for s in plan_experiment(load_experiment(exp))}
    assert stages["shards/msm_a"].key != stages["shards/msm_b"].key  # different specs
    assert stages["sft/a"].key != stages["sft/b"].key
    assert stages["eval/value/a"].dir != stages["eval/value/b"].dir


def test_dry_run_prints_plan_with_estimates_and_runs_nothing(exp):
    _, lines = run(exp, dry_run=True)
    text = "\n".join(lines)
    assert "to run, 0 to resume, 0 done" in text
    assert "API ~$0.00" in text or "API spend" in text
    assert "4 steps, 128 tokens/step" in text
    assert "1,000 tokens" in text
    assert "$ " in text and "fake_msm.py train" in text
    assert not (exp / "runs").exists() and commands(exp) == []


def test_second_run_skips_every_finished_stage(exp):
    run(exp)
    first = len(commands(exp))
    assert first == 3 + 1 + 3 + 5 + 3 + 3  # generate, tokenizer, shards, train, export, eval
    _, lines = run(exp)
    assert len(commands(exp)) == first
    assert "1 to run, 0 to resume, 18 done" in lines[0]  # only the report is rebuilt


def test_changed_sft_config_reruns_sft_and_downstream_only(exp):
    run(exp)
    before = len(commands(exp))
    run(exp, "arms.b.sft.overrides=[train.steps=6]")
    rerun = commands(exp)[before:]
    assert rerun == ["train train.yaml", "convert orbax-to-hf", "eval value"]


def test_edited_spec_file_reruns_its_generation_and_everything_after(exp):
    stages = {s.id: s for s in plan_experiment(load_experiment(exp))}
    (exp / "spec_b.md").write_text("# Spec B\nPrefer Swiss cheese.\n")
    after = {s.id: s for s in plan_experiment(load_experiment(exp))}
    changed = {sid for sid in stages if stages[sid].key != after[sid].key}
    assert "generate/docs_b" in changed and "sft/b" in changed and "tokenizer" in changed
    assert "generate/docs_a" not in changed and "generate/chats" not in changed


def test_killed_train_stage_resumes_from_its_checkpoints(exp, monkeypatch):
    monkeypatch.setenv("FAKE_MSM_KILL_AT_STEP", "2")
    with pytest.raises(UserError, match="stage midtrain/a failed .*run the same command again"):
        run(exp)
    stages = {s.id: s for s in plan_experiment(load_experiment(exp))}
    assert manifest.stage_status(stages["midtrain/a"]) == "resume"
    monkeypatch.delenv("FAKE_MSM_KILL_AT_STEP")
    _, lines = run(exp)
    assert any("resume midtrain/a" in line for line in lines)
    steps = [json.loads(line)["step"] for line in (exp / stages["midtrain/a"].dir / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the killed run, 3-4 after resuming: none repeated
    done = manifest.read_manifest(stages["midtrain/a"].dir)
    assert done["state"] == "done" and done["attempts"] == 2


def test_report_has_results_table_loss_plot_and_stage_folders(exp):
    ctx, lines = run(exp)
    report = ctx["report_path"]
    assert lines[-1] == f"report: {report}"
    text = report.read_text()
    assert "| arm | value_aligned | position_bias |" in text
    assert "| aft_only |" in text and "per_domain" not in text
    assert (report.parent / "loss_curves.png").stat().st_size > 1000
    assert "midtrain/a" in text
    rows = (report.parent / "results.csv").read_text().splitlines()
    assert rows[0] == "arm,eval,metric,value,ci_low,ci_high,n" and len(rows) == 1 + 3 * 2


def test_only_runs_the_named_stage_and_what_it_needs(exp):
    run(exp, only=["shards/aft"])
    assert commands(exp) == ["generate docs", "generate docs", "generate chats", "tokenizer train",
                             "shards shards.yaml"]


def test_unknown_dataset_in_shards_names_the_key(exp):
    with pytest.raises(ConfigError, match=r"shards\.aft\.data names unknown dataset 'chatz'"):
        load_experiment(exp, "shards.aft.data=[chatz]")


def test_typo_in_experiment_key_suggests_the_right_one(exp):
    with pytest.raises(ConfigError, match="did you mean 'midtrain'"):
        load_config(ExperimentConfig, exp / "experiment.yaml", ["arms.a.midtrian={config: x, shards: [msm_a]}"])


def test_msm_run_dry_run_prints_the_real_msm_commands(exp, capsys):
    assert msm(["run", str(exp / "experiment.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-m msm_jax.cli generate docs" in out and "-m msm_jax.cli eval value" in out
    assert not (exp / "runs").exists()


def test_pretrain_is_one_shared_stage_every_arm_starts_from(exp):
    cfg = load_experiment(exp, "shards.world={config: shards.yaml, data: [docs_a]}",
                          "pretrain={config: train.yaml, shards: [world]}")
    stages = {s.id: s for s in plan_experiment(cfg)}
    base = f"init.from_checkpoint={stages['pretrain'].dir}/checkpoints"
    assert base in stages["midtrain/a"].argv and base in stages["midtrain/b"].argv
    assert base in stages["sft/aft_only"].argv and base not in stages["sft/a"].argv


def test_identical_stages_under_two_names_share_one_folder_and_run_once(exp):
    cfg = load_experiment(exp, "datasets.chats_nocot={kind: chats, config: gen.yaml, file: chats_nocot.jsonl}",
                          "shards.aft.data=[chats_nocot]")
    stages = {s.id: s for s in plan_experiment(cfg)}
    assert stages["generate/chats"].dir == stages["generate/chats_nocot"].dir
    assert f"{stages['generate/chats'].dir}/chats_nocot.jsonl" in " ".join(stages["shards/aft"].argv)
    run_experiment(cfg, launcher=fake_launcher(), out=lambda line: None, only=["shards/aft"])
    assert commands(exp).count("generate chats") == 1


def test_base_model_is_imported_once_and_a_baseline_arm_evaluates_it(exp):
    (exp / "hf").mkdir()
    cfg = load_experiment(exp, "base_model=hf", "arms.base={eval_overrides: [value=a]}")
    stages = {s.id: s for s in plan_experiment(cfg)}
    assert stages["import"].argv == ["convert", "hf-to-orbax", "hf", f"{stages['import'].dir}/checkpoints"]
    base = f"init.from_checkpoint={stages['import'].dir}/checkpoints"
    assert base in stages["midtrain/a"].argv and base in stages["sft/aft_only"].argv
    assert f"backend.path={stages['import'].dir}/checkpoints" in stages["eval/value/base"].argv
    assert "sft/base" not in stages and "midtrain/base" not in stages


def test_arm_without_training_needs_a_base_model(exp):
    with pytest.raises(ConfigError, match="arms.base: an arm without midtrain and sft evaluates the base model"):
        load_experiment(exp, "arms.base={eval_overrides: [value=a]}")


def test_msm_run_on_tpu_needs_a_shared_folder_and_runs_train_on_every_worker(exp, capsys):
    flags = ["--launcher", "tpu", "--tpu-name", "v5p", "--tpu-zone", "z", "--dry-run"]
    assert msm(["run", str(exp / "experiment.yaml"), *flags]) == 1
    assert "must be a folder every TPU worker sees" in capsys.readouterr().err
    assert msm(["run", str(exp / "experiment.yaml"), "out=/gcs/bucket/tiny", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = next(line for line in lines if " msm train " in line)
    assert "tools/tpu/run_stage.sh --name v5p --zone z --workers all -- msm train train.yaml" in train
    assert "checkpoint.directory=/gcs/bucket/tiny/midtrain/" in train
    assert any("--workers 0 -- msm generate docs" in line for line in lines)


def test_missing_dataset_file_stops_before_any_stage_runs(exp):
    with pytest.raises(UserError, match=r"datasets.extra.path: nowhere.jsonl not found"):
        run(exp, "datasets.extra={kind: chats, path: nowhere.jsonl}")
    assert commands(exp) == []
    _, lines = run(exp, "datasets.extra={kind: chats, path: nowhere.jsonl}", dry_run=True)
    assert lines[0] == "warning: datasets.extra.path: nowhere.jsonl not found"


def test_local_stages_compile_into_one_cache_in_the_experiment_folder(tmp_path, monkeypatch):
    import sys

    from msm_jax.experiment.launchers import CACHE_ENV
    from msm_jax.experiment.runner import make_launcher
    from msm_jax.experiment.stages import Stage

    monkeypatch.delenv(CACHE_ENV, raising=False)
    launcher = make_launcher("local", None, str(tmp_path / "exp"))
    launcher.msm_prefix = [sys.executable, "-c", f"import os; print(os.environ[{CACHE_ENV!r}])"]
    stage = Stage(id="sft/a", kind="sft", argv=[], deps=[])
    assert launcher.run(stage, tmp_path / "log").returncode == 0
    assert (tmp_path / "log").read_text().splitlines()[-1] == str(tmp_path / "exp" / "jax_cache")
    assert make_launcher("local", None, "gs://bucket/exp").env is None  # a bucket is no compile cache
    monkeypatch.setenv(CACHE_ENV, "/mine")
    assert make_launcher("local", None, str(tmp_path / "exp")).env is None  # the user's own choice stands
