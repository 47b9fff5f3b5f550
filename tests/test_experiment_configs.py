"""The shipped experiments, recipes and sweeps: every stage command they produce parses with
the real `msm` parser, and its config loads with the wiring `msm run` adds (so a renamed key
in a stage command's config shows up here, not halfway through a TPU run)."""

from pathlib import Path

import pytest

from msm_jax.cli import build_parser
from msm_jax.config import load_config
from msm_jax.experiment.config import ExperimentConfig, SweepConfig
from msm_jax.experiment.runner import plan_experiment
from msm_jax.experiment.stages import REPO_ROOT, _overrides_after
from msm_jax.experiment.sweep import expand, shared_stages

EXPERIMENTS = sorted((REPO_ROOT / "configs" / "experiments").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "recipes").glob("*.yaml"))
SWEEPS = sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml"))


def stage_config_class(stage):
    """The config dataclass the stage's own command loads (None for commands without one)."""
    if stage.kind in ("pretrain", "midtrain", "sft"):
        from msm_jax.train.config import RunConfig
        return RunConfig
    if stage.kind == "shards":
        from data_pipeline.shards import ShardsConfig
        return ShardsConfig
    if stage.kind == "eval":
        from eval.agentic import AgenticConfig
        from eval.value_generalization import ValueGenConfig
        return {"value": ValueGenConfig, "agentic": AgenticConfig}.get(stage.argv[1])
    return None


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_stage_command_parses_and_its_config_loads_with_the_wiring(path):
    parser = build_parser()
    stages = plan_experiment(load_config(ExperimentConfig, path))
    assert stages, path
    for stage in stages:
        if stage.call is not None:
            continue
        args = parser.parse_args(stage.argv)
        assert callable(args.func), stage.id
        cls = stage_config_class(stage)
        if cls is not None:
            overrides = _overrides_after(stage.argv, stage.config)
            if stage.kind == "shards":
                overrides.append(f"out={stage.dir}")
            load_config(cls, stage.config, overrides)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_generation_configs_load_with_their_flags(path):
    from data_pipeline import aft_chats, msm_docs
    from data_pipeline.generate_cli import flag_overrides

    for stage in plan_experiment(load_config(ExperimentConfig, path)):
        if stage.kind == "generate":
            args = build_parser().parse_args(stage.argv)
            cls = msm_docs.DocsConfig if args.what == "docs" else aft_chats.ChatsConfig
            cfg = load_config(cls, args.config, list(args.overrides) + flag_overrides(args))
            assert Path(cfg.out_dir) == Path(stage.dir)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_expand_and_share_stages(path):
    sweep = load_config(SweepConfig, path)
    runs = expand(sweep)
    merged = shared_stages(runs)
    assert len(runs) >= 4 and len(merged) < sum(len(r.stages) for r in runs)
    assert sum(s.kind == "generate" for s in merged) <= 2 * len(runs)


def test_recipes_follow_the_paper():
    from msm_jax.config import load_tree

    cheese, _ = load_tree(REPO_ROOT / "configs/recipes/llama3.1-8b-cheese/midtrain.yaml")
    assert cheese["train"]["seq_len"] == 4096 and cheese["optimizer"]["lr"] == 1e-4
    assert cheese["lora"]["rank"] == 64 and cheese["lora"]["alpha"] == 128 and len(cheese["lora"]["targets"]) == 7
    assert cheese["schedule"]["kind"] == "cosine" and cheese["data"]["num_epochs"] == 1
    exp = load_config(ExperimentConfig, REPO_ROOT / "configs/recipes/llama3.1-8b-cheese.yaml")
    assert exp.shards["msm_affordability"].budget_tokens == 8_000_000
    assert exp.datasets["chats"].args == ("--chats", "5000") and "instruct" in exp.arms["affordability"].sft.shards
    for name in ("qwen2.5-32b-instruct", "qwen3-32b"):
        agentic = load_config(ExperimentConfig, REPO_ROOT / f"configs/recipes/{name}-agentic.yaml")
        assert agentic.shards["msm"].budget_tokens == 41_000_000
        assert {"aft_cot", "aft_nocot", "msm_aft_cot", "msm_aft_nocot", "baseline"} <= set(agentic.arms)
        text = (REPO_ROOT / f"configs/recipes/{name}-agentic.yaml").read_text()
        assert agentic.slice.accelerator == "v5p-32" and "v6e-32" in text
    qwen, _ = load_tree(REPO_ROOT / "configs/recipes/qwen-32b-agentic/midtrain.yaml")
    assert qwen["train"]["seq_len"] == 8192
