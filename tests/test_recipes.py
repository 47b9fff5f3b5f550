"""The shipped paper recipes: `msm run RECIPE --dry-run` states the paper's numbers (chats,
tokens, samples per condition, temperature, max tokens, urgency, adapter continuation), the
judge's spend, and TPU hours; a warmup that would not end before the last step fails the plan."""

import json

import pytest

from msm_jax.cli import main as msm
from msm_jax.config import ConfigError, load_config
from msm_jax.experiment import plan
from msm_jax.experiment.config import ExperimentConfig
from msm_jax.experiment.runner import plan_experiment, run_experiment
from msm_jax.experiment.stages import REPO_ROOT

RECIPES = REPO_ROOT / "configs" / "recipes"
AGENTIC = ["qwen3-32b-agentic.yaml", "qwen2.5-32b-instruct-agentic.yaml"]


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def dry_run(name, *overrides):
    cfg = load_config(ExperimentConfig, RECIPES / name, list(overrides))
    lines = []
    run_experiment(cfg, dry_run=True, out=lines.append)
    stages = plan_experiment(cfg)
    return "\n".join(lines), plan.estimate_stages(stages, cfg.slice), {s.id: s for s in stages}


@pytest.mark.parametrize("name", AGENTIC)
def test_agentic_recipe_plan_states_the_papers_aft_data_and_eval_grid(name):
    text, est, stages = dry_run(name)
    assert est["generate/chats_cot"].facts["chats"] == 10_000
    assert est["shards/aft_cot"].tokens == 8_000_000 and est["shards/aft_nocot"].tokens == 5_000_000
    assert est["shards/instruct"].tokens == 2_000_000 and est["shards/msm"].tokens == 41_000_000
    assert est["sft/msm_aft_cot"].facts["tokens"] == 10_000_000  # AFT CoT chats + the instruction mix
    assert est["sft/msm_aft_nocot"].facts["tokens"] == 7_000_000
    for arm in ("msm_aft_cot", "msm_aft_nocot"):
        assert est[f"sft/{arm}"].facts["adapter"] == "continue" and est[f"sft/{arm}"].facts["init_kind"] == "midtrain"
        assert est[f"sft/{arm}"].facts["warmup"] < est[f"sft/{arm}"].facts["steps"]
    agentic = est["eval/agentic/msm_aft_cot"].facts
    assert agentic == {"conditions": 27, "samples_per_condition": 300, "samples": 8_100, "temperature": 0.7,
                       "max_tokens": 4096, "urgencies": ["replacement"], "judge": "claude-sonnet-4-6"}
    assert est["eval/agentic/msm_aft_cot"].judge_usd > 10  # 8,100 Sonnet calls cost real money
    assert "continues the upstream LoRA adapter" in text
    assert "27 conditions (3 scenarios x 9 goals x urgency replacement) x 300 samples = 8,100 samples" in text
    header = text.splitlines()[len([l for l in text.splitlines() if l.startswith("warning")]) + 1]
    judged = float(header.split("judging at most ~$")[1].rstrip(")").replace(",", ""))
    assert judged > 6 * 10  # six evaluated arms, each judged
    assert "on v5p-32 (16 chips x 459 TFLOP/s bf16), assuming 40% MFU for training" in text
    sources = json.loads(next(a for a in stages["sft/msm_aft_cot"].argv if a.startswith("data.sources="))
                         .split("=", 1)[1])
    assert [s["weight"] for s in sources] == [8_000_000.0, 2_000_000.0]  # mixed by tokens


def test_cheese_recipe_plan_states_5k_opaque_chats_and_the_instruction_mix():
    text, est, stages = dry_run("llama3.1-8b-cheese.yaml")
    assert est["generate/chats"].facts["chats"] == 5_000
    assert est["shards/aft"].tokens == 165_000 and est["shards/instruct"].tokens == 2_000_000
    sft = est["sft/affordability"].facts
    assert sft["tokens"] == 2_165_000 and sft["adapter"] == "continue" and sft["warmup"] < sft["steps"] == 33
    assert est["sft/aft_only"].facts["init_kind"] == "import"  # a fresh adapter on the base
    assert "msm_only_affordability" in {s.split("/")[-1] for s in stages}
    assert "2,165,000 tokens, ~33 steps, 65,536 tokens/step, warmup 3" in text and "TPU h on v5p-8 at 40% MFU" in text


def test_warmup_not_below_the_steps_fails_the_plan_with_one_line(capsys):
    rc = msm(["run", str(RECIPES / "llama3.1-8b-cheese.yaml"), "arms.aft_only.sft.overrides=[schedule.warmup_steps=40]",
              "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "stage sft/aft_only: schedule.warmup_steps=40 is not below its ~33 steps (2,165,000 tokens at 65,536 tokens/step)" in err


def test_a_slice_the_plan_does_not_know_is_a_config_error():
    with pytest.raises(ConfigError, match="slice.accelerator.*unknown accelerator 'v9x-8'"):
        load_config(ExperimentConfig, RECIPES / "llama3.1-8b-cheese.yaml", ["slice.accelerator=v9x-8"])
    assert plan.slice_chips("v5p-32") == (16, 459e12) and plan.slice_chips("v6e-16") == (16, 918e12)


def test_mix_by_tokens_needs_a_token_count_for_every_shard_set():
    with pytest.raises(ConfigError, match=r"arms.affordability.sft.mix: tokens needs shards.aft.budget_tokens or expected_tokens"):
        load_config(ExperimentConfig, RECIPES / "llama3.1-8b-cheese.yaml", ["shards.aft.expected_tokens=null"])


SHIPPED = sorted((REPO_ROOT / "configs" / "recipes").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "experiments").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "experiments" / "values").glob("*.yaml")) + sorted(
    (REPO_ROOT / "configs" / "experiments" / "spec-content").glob("*.yaml"))
VALUES = ["pro_environment", "novelty", "tradition", "simplicity", "difficulty", "individualism"]
SWEEPS = sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED + [pytest.param(p, marks=pytest.mark.slow) for p in SWEEPS],
                         ids=lambda p: p.name)
def test_every_shipped_experiment_and_sweep_passes_its_dry_run(path, capsys):
    command = "sweep" if path in SWEEPS else "run"
    assert msm([command, str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "plan: " in out and "API ~$" in out and "TPU: " in out


@pytest.mark.parametrize("value", VALUES)
def test_each_further_value_has_its_specs_and_held_out_pairs(value):
    from eval.value_generalization import load_pairs

    pairs = load_pairs(REPO_ROOT / "eval" / "data" / "values" / f"{value}_pairs.jsonl", value)
    assert len({p["domain"] for p in pairs}) >= 4
    assert sorted(p["aligned"][value] for p in pairs) == [0] * (len(pairs) // 2) + [1] * (len(pairs) // 2)  # no position shortcut
    spec = (REPO_ROOT / "data_pipeline" / "specs" / "values" / f"{value}.md").read_text()
    rules = (REPO_ROOT / "data_pipeline" / "specs" / "values" / f"{value}_rules.md").read_text()
    taught = spec.split("## Rules (")[1].split(",")[0]
    assert taught in rules and not any(p["domain"] == taught for p in pairs)  # evaluated on unseen domains


def test_spec_content_variants_share_the_five_core_rules():
    import re

    folder = REPO_ROOT / "data_pipeline" / "specs" / "spec_content"
    core = re.findall(r"^(\d)\. (.+?)(?=\n\d\. |\Z)", (folder / "rules_only.md").read_text(), re.M | re.S)
    assert [n for n, _ in core] == ["1", "2", "3", "4", "5"]
    for variant in ("rules_subrules.md", "rules_values.md"):
        text = " ".join((folder / variant).read_text().split())
        assert all(" ".join(rule.split()) in text for _, rule in core), variant
    principles = (folder / "principles_only.md").read_text()
    assert principles.count("\n- ") == 5 and "1." not in principles  # the same five, as principles
    exp = load_config(ExperimentConfig, REPO_ROOT / "configs/experiments/spec-content/qwen3-32b-spec-content.yaml")
    specs = {exp.datasets[exp.shards[exp.arms[a].midtrain.shards[0]].data[0]].spec for a in
             ("rules_only", "rules_subrules", "rules_values", "principles_only")}
    assert len(specs) == 4 and len({tuple(exp.arms[a].sft.shards) for a in exp.arms if exp.arms[a].sft}) == 1
