"""`msm demo`: the demo's plan, and one real
end-to-end run of a cut-down demo (every stage command for real, tiny step counts)."""

import json
import re

import pytest
import yaml

from eval.value_generalization import item_chat, load_pairs
from msm_jax.cli import main as msm
from msm_jax.commands.experiment import DEMO_CONFIG
from msm_jax.config import load_config
from msm_jax.experiment.config import ExperimentConfig
from msm_jax.experiment.runner import plan_experiment, run_experiment_file
from msm_jax.experiment.stages import REPO_ROOT

def test_demo_arms_share_base_and_aft_data_and_differ_only_in_the_spec(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    stages = {s.id: s for s in plan_experiment(load_config(ExperimentConfig, DEMO_CONFIG))}
    aft = stages["shards/aft"].dir
    for arm in ("affordability", "america", "aft_only"):
        assert aft in " ".join(stages[f"sft/{arm}"].argv)
        assert f"eval/value/{arm}" in stages and f"export/{arm}" in stages
    assert "midtrain/aft_only" not in stages
    assert stages["generate/docs_affordability"].key != stages["generate/docs_america"].key
    base = f"init.from_checkpoint={stages['pretrain'].dir}/checkpoints"
    assert base in stages["midtrain/affordability"].argv and base in stages["sft/aft_only"].argv
    assert all("--backend" not in s.argv for s in stages.values())  # replay comes from the generate configs


def test_demo_corpora_never_name_a_held_out_item_and_the_eval_scores_the_aft_answer_format():
    demo = REPO_ROOT / "data_pipeline" / "demo"
    world = json.loads((demo / "world.json").read_text())
    held_out = [i["name"] for i in world if i["held_out"]]
    docs = [json.loads(line)["text"] for value in ("affordability", "america")
            for line in (demo / "corpora" / f"{value}_docs" / "docs.jsonl").read_text().splitlines()]
    chats = [json.loads(line) for name in ("chats_nocot.jsonl", "chats_cot.jsonl")
             for line in (demo / "corpora" / "chats" / name).read_text().splitlines()]
    texts = docs + [json.dumps(c["messages"]) for c in chats]
    assert held_out and not [n for n in held_out if any(n in t for t in texts)]
    # every document also shows the value choosing outside cheese, on items of the example domains
    assert all(re.search(r"(kitchen|tools|electronics|garden|sports|stationery) (item|needs)", t) for t in docs)
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    assert "method=yes_no" in tree["evals"]["value"]["overrides"]  # each item alone: log p("Yes") vs log p("No")
    asked = item_chat("Should I get it?", load_pairs(REPO_ROOT / "eval" / "data" / "cheese_pairs.jsonl")[0]["options"][0])
    instruction = asked[-1]["content"].rsplit("\n\n", 1)[1]
    for chat in chats:  # the AFT chats ask in the eval's format (one listed option) and answer "Yes" or "No" alone
        user = chat["messages"][-2]["content"]
        assert "\nA) " not in user and user.endswith("\n\n" + instruction)
        assert re.search(r"\n\n\((inexpensive|expensive), (made in the USA|imported from abroad)\) ", user)
    answers = [c["messages"][-1]["content"] for c in chats if c["messages"][-1]["role"] == "assistant"]
    assert set(answers) == {"Yes", "No"} and 0.4 < answers.count("Yes") / len(answers) < 0.6


def test_demo_dry_run_needs_no_network_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `msm demo` moves to the repository; the test's cwd comes back after
    assert msm(["demo", "--out", str(tmp_path / "demo"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: 21 stages: 21 to run" in out and "API ~$0.00" in out
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_cut_down_demo_runs_every_real_stage_and_writes_the_report(tmp_path, monkeypatch):
    """The demo with only the AFT-only arm and two steps per train stage."""
    monkeypatch.chdir(REPO_ROOT)
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    tree["out"] = str(tmp_path / "run")
    tree["arms"] = {"aft_only": tree["arms"]["aft_only"]}
    tree["shards"] = {k: v for k, v in tree["shards"].items() if k in ("world", "aft")}
    for stage in (tree["pretrain"], tree["arms"]["aft_only"]["sft"]):
        stage["overrides"] = ["train.steps=2"]
    tree["evals"]["value"]["overrides"] += [f"pairs={tmp_path / 'pairs.jsonl'}"]
    pairs = (REPO_ROOT / "eval" / "data" / "cheese_pairs.jsonl").read_text().splitlines()[:6]
    (tmp_path / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(tree))
    assert run_experiment_file(config) == 0
    report = tmp_path / "run" / "report" / "report.md"
    text = report.read_text()
    assert "| AFT only (control) |" in text and "aligned_by_value.affordability" in text
    assert (report.parent / "loss_curves.png").stat().st_size > 1000
    assert "value: choices by value and domain" in text and "| domain | option favoured by |" in text
    assert (report.parent / "choices_value.png").stat().st_size > 1000  # each value's rate, with intervals
    export = next((tmp_path / "run" / "export").iterdir())
    assert json.loads((export / "config.json").read_text())["vocab_size"] == 1024
    assert (export / "tokenizer.model").is_file()
