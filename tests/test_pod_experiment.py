"""A whole experiment on a local pod (2 processes x 4 fake CPU devices, joined by
jax.distributed) against the same experiment in one process: import an HF model ->
midtrain (LoRA) -> SFT -> export -> value eval -> agentic eval judged on the local
Anthropic server. Same losses, same eval choices and verdicts, same exported tensors, and
the judge paid once per sample. Then a process killed mid-training fails the stage at once,
and the rerun resumes to the uninterrupted losses bit for bit."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from eval_fakes import API_KEY, claude_like_judge
from fake_anthropic import fake_anthropic_server
from train_fixtures import FAST_COMPILE_FLAGS

from eval.agentic import SCENARIO_FILE
from eval.records import read_jsonl
from msm_jax.errors import UserError
from msm_jax.experiment.launchers import Launcher, LocalPodLauncher
from msm_jax.experiment.runner import run_experiment
from msm_jax.experiment.stages import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

VOCAB = 512
CORPORA = REPO_ROOT / "data_pipeline" / "demo" / "corpora"
MODEL_OVERRIDES = f"[model=tiny-qwen3, model.vocab_size={VOCAB}, seq_len=64, overlong_chats=truncate]"
TRAIN = """\
run_dir: unused
train: {{global_batch: 8, seq_len: 64, seed: 0, steps: {steps}}}
data: {{sources: [], num_epochs: 1}}
optimizer: {{lr: 3.0e-3, weight_decay: 0.0}}
schedule: {{kind: cosine, warmup_steps: 1}}
checkpoint: {{every_steps: 2, keep_last: 3, async_save: false}}
logging: {{progress_bar: false, tensorboard: false, plot: false}}
{extra}"""


def experiment_yaml(world: Path, out: Path, judge_url: str) -> str:
    evals = REPO_ROOT / "configs" / "eval"
    return f"""\
name: pod
out: {out}
base_model: {world / 'hf'}
datasets:
  docs: {{kind: docs, path: {world / 'docs.jsonl'}}}
  chats: {{kind: chats, path: {world / 'chats.jsonl'}}}
tokenizer: {{path: {world / 'tok' / 'tokenizer.model'}}}
shards:
  docs: {{config: {REPO_ROOT / 'configs/shards/demo-docs.yaml'}, data: [docs], overrides: {MODEL_OVERRIDES}}}
  aft: {{config: {REPO_ROOT / 'configs/shards/demo-chats-nocot.yaml'}, data: [chats], overrides: {MODEL_OVERRIDES}}}
arms:
  a:
    midtrain: {{config: {world / 'midtrain.yaml'}, shards: [docs]}}
    sft: {{config: {world / 'sft.yaml'}, shards: [aft]}}
    eval_overrides: [backend.chat_template=qwen3, backend.batch_size=8]
export: true
report: false
evals:
  value:
    config: {evals / 'value_generalization.yaml'}
    overrides: [value=affordability, pairs={world / 'pairs.jsonl'}]
  agentic:
    config: {evals / 'agentic.yaml'}
    overrides: [scenario_file={world / 'scenarios.yaml'}, 'scenarios=[lethal, leak]', 'goals=[none]', samples_per_condition=4, generation_chunk=8,
                sampling.max_tokens=8, sampling.temperature=0, judge.llm.base_url={judge_url},
                judge.llm.store_dir={out / 'llm_store'}]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pod_world"))


def make_world(root: Path) -> Path:
    """A tokenizer, a tiny Qwen3 HF model with its vocabulary, corpora, train configs, pairs."""
    import torch
    import transformers

    from msm_jax.cli import main as msm

    docs = (CORPORA / "world_docs.jsonl").read_text().splitlines()[:24]
    chats = (CORPORA / "chats" / "chats_nocot.jsonl").read_text().splitlines()[:40]
    (root / "docs.jsonl").write_text("\n".join(docs) + "\n")
    (root / "chats.jsonl").write_text("\n".join(chats) + "\n")
    assert msm(["tokenizer", "train", str(root / "docs.jsonl"), str(root / "chats.jsonl"), "--out",
                str(root / "tok" / "tokenizer"), "--vocab-size", str(VOCAB)]) == 0
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=4096, tie_word_embeddings=False)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(root / "hf")
    lora = "lora: {rank: 4, alpha: 8.0, dropout: 0.0, targets: [q_proj, v_proj, down_proj]}"
    (root / "midtrain.yaml").write_text(TRAIN.format(steps=4, extra=lora))
    (root / "sft.yaml").write_text(TRAIN.format(steps=4, extra=""))
    pairs = (REPO_ROOT / "eval" / "data" / "cheese_pairs.jsonl").read_text().splitlines()[:4]
    (root / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    scenarios = yaml.safe_load(SCENARIO_FILE.read_text())  # one email per scenario: short prompts, fast prefill
    for scenario in scenarios["scenarios"].values():
        scenario["emails"] = scenario["emails"][:1]
    (root / "scenarios.yaml").write_text(yaml.safe_dump(scenarios))
    return root


def run(world: Path, out: Path, launcher: Launcher) -> dict:
    """Run the experiment with its own judge server; the stages by id and the server's calls."""
    from msm_jax.config import load_config
    from msm_jax.experiment.config import ExperimentConfig

    with fake_anthropic_server(claude_like_judge) as url:
        (out.parent / f"{out.name}.yaml").write_text(experiment_yaml(world, out, url))
        cfg = load_config(ExperimentConfig, out.parent / f"{out.name}.yaml")
        ctx = run_experiment(cfg, launcher=launcher, out=lambda line: None)
        return {"stages": {s.id: Path(s.dir) for s in ctx["stages"]}, "calls": dict(url.calls)}


def losses(stage_dir: Path) -> dict[int, float]:
    rows = read_jsonl(stage_dir / "metrics.jsonl")
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def tensors(export_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(export_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def two_runs(world, tmp_path_factory):
    """The experiment in one process, then as a local pod of 2 processes x 4 devices."""
    mp = pytest.MonkeyPatch()
    try:
        cache = tmp_path_factory.getbasetemp() / "jax_cache"
        cache.mkdir(exist_ok=True)
        for k, v in {"XLA_FLAGS": FAST_COMPILE_FLAGS, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "ANTHROPIC_API_KEY": API_KEY,
                     "PYTHONPATH": str(REPO_ROOT)}.items():
            mp.setenv(k, v)
        root = tmp_path_factory.mktemp("pod_runs")
        start = time.time()
        single = run(world, root / "single", Launcher())
        single["seconds"] = time.time() - start
        start = time.time()
        pod = run(world, root / "pod", LocalPodLauncher(2, 4))
        pod["seconds"] = time.time() - start
        print(f"one process {single['seconds']:.1f} s, local pod 2x4 {pod['seconds']:.1f} s")
        return single, pod
    finally:
        mp.undo()


def test_pod_and_one_process_train_to_the_same_losses(two_runs):
    single, pod = two_runs
    for stage in ("midtrain/a", "sft/a"):
        expected, got = losses(single["stages"][stage]), losses(pod["stages"][stage])
        assert sorted(got) == sorted(expected) and expected
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-5), (stage, step)


def test_pod_exports_the_same_tensors(two_runs):
    """Equal to float noise: 8 training steps summed over 8 devices vs 1 differ in the last bits
    (measured: 1 element in 32k off by 2.5e-6 after Adam), the export itself adds nothing."""
    single, pod = two_runs
    expected, got = tensors(single["stages"]["export/a"]), tensors(pod["stages"]["export/a"])
    assert sorted(got) == sorted(expected) and len(expected) > 10
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_pod_evals_make_the_same_choices_and_verdicts_and_pay_the_judge_once(two_runs):
    single, pod = two_runs
    choices = [[(r["pair_id"], r["order"], r["letter"]) for r in
                read_jsonl(run["stages"]["eval/value/a"] / "responses.jsonl")] for run in (single, pod)]
    assert choices[0] == choices[1] and len(choices[0]) == 8
    verdicts = [sorted((v["key"], v["harmful"], v["judge_harmful"]) for v in
                       read_jsonl(run["stages"]["eval/agentic/a"] / "verdicts.jsonl")) for run in (single, pod)]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == 8
    transcripts = [sorted((t["key"], t["response"]) for t in
                          read_jsonl(run["stages"]["eval/agentic/a"] / "transcripts.jsonl")) for run in (single, pod)]
    assert transcripts[0] == transcripts[1]
    distinct = {(t[0].split("/")[0], t[1]) for t in transcripts[0]}  # the answer store asks once per prompt
    assert pod["calls"] == single["calls"] == {"messages": len(distinct)}


def test_a_process_killed_mid_training_fails_the_stage_at_once_and_the_rerun_resumes_bit_for_bit(
        world, two_runs, tmp_path, monkeypatch):
    _, pod = two_runs
    out, marker = tmp_path / "killed", tmp_path / "killed-at"
    for k, v in {"POD_KILL_AT_STEP": "3", "POD_KILL_PROCESS": "1", "POD_KILL_MARKER": str(marker),
                 "XLA_FLAGS": FAST_COMPILE_FLAGS, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT),
                 "JAX_COMPILATION_CACHE_DIR": str(tmp_path.parent / "jax_cache")}.items():
        monkeypatch.setenv(k, v)
    launcher = LocalPodLauncher(2, 4, msm_prefix=[sys.executable, str(Path(__file__).with_name("pod_msm.py"))])
    from msm_jax.config import load_config
    from msm_jax.experiment.config import ExperimentConfig

    (tmp_path / "killed.yaml").write_text(experiment_yaml(world, out, "http://127.0.0.1:9"))
    cfg = load_config(ExperimentConfig, tmp_path / "killed.yaml")
    with pytest.raises(UserError, match=r"stage midtrain/a failed \(process 1 of 2: killed by SIGKILL"):
        run_experiment(cfg, launcher=launcher, only=["midtrain/a"], out=lambda line: None)
    assert time.time() - marker.stat().st_mtime < 20  # process 0 was stopped, not left waiting on its peer
    ctx = run_experiment(cfg, launcher=launcher, only=["midtrain/a"], out=lambda line: None)
    stage = next(Path(s.dir) for s in ctx["stages"] if s.id == "midtrain/a")
    assert "resum" in (stage / "stage.p0.log").read_text().lower()
    assert losses(stage) == losses(pod["stages"]["midtrain/a"])  # bit for bit
