"""The whole stage chain on real shards through the `msm` CLI: midtraining on documents,
then LoRA SFT on chats from the midtraining checkpoint, then export (full and LoRA) to
Hugging Face with logit parity."""

import json
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from train_fixtures import REPO, jax_cache_dir, losses, worker_env  # noqa: F401

from data_pipeline.chat_templates import ChatConfig
from data_pipeline.shards import InputConfig, ShardsConfig, build_shards
from data_pipeline.tokenizer import train_sentencepiece
from msm_jax import checkpoint
from msm_jax.models.build import abstract_model
from msm_jax.sharding import MeshConfig, make_mesh

WORDS = "the cheese model spec value affordable american foreign price choice report memo honest".split()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage_data")
    rng = np.random.default_rng(0)
    with open(tmp / "docs.jsonl", "w") as f:
        for i in range(60):
            f.write(json.dumps({"text": f"Memo {i}: " + " ".join(rng.choice(WORDS, size=60))}) + "\n")
    with open(tmp / "chats.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {i}: which cheese is the better value?"},
                {"role": "assistant", "content": "Answer: " + " ".join(rng.choice(WORDS, size=12))}]}) + "\n")
    tok = train_sentencepiece([tmp / "docs.jsonl", tmp / "chats.jsonl"], tmp / "tok", vocab_size=400)
    for kind in ("docs", "chats"):
        build_shards(ShardsConfig(inputs=(InputConfig(path=str(tmp / f"{kind}.jsonl"), kind=kind),),
                                  out=str(tmp / kind), tokenizer=str(tok), chat=ChatConfig(template="qwen3"),
                                  seq_len=64, pack_buffer=16, rows_per_file=8))
    return tmp


def msm_train(jax_cache_dir, config, *overrides):
    proc = subprocess.run([sys.executable, "-m", "msm_jax.cli", "train", str(config), *overrides],
                          env=worker_env(jax_cache_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


COMMON = ["train.seq_len=64", "train.global_batch=4", "logging.progress_bar=false"]


def sft_overrides(run_dir, shards) -> list[str]:
    return [f"run_dir={run_dir}", f"data.sources=[{{path: {shards / 'chats'}}}]", "train.steps=4", "lora.rank=4",
            "lora.alpha=8.0", "logging.tensorboard=false", "logging.plot=false", *COMMON]


@pytest.fixture(scope="module")
def stages(shards, tmp_path_factory, jax_cache_dir):
    runs = tmp_path_factory.mktemp("stage_runs")
    common = COMMON
    msm_train(jax_cache_dir, REPO / "configs/train/tiny-midtrain.yaml", f"run_dir={runs / 'mid'}",
              f"data.sources=[{{path: {shards / 'docs'}}}]", "train.steps=6", "checkpoint.every_steps=3",
              f"eval.data={{sources: [{{path: {shards / 'docs'}}}]}}", "eval.every_steps=3", "eval.batches=1",
              *common)
    out = msm_train(jax_cache_dir, REPO / "configs/train/tiny-sft.yaml", f"init.from_checkpoint={runs / 'mid'}",
                    *sft_overrides(runs / "sft", shards))
    assert "msm train: completed at step 4/4" in out
    return runs


def test_midtraining_run_dir_holds_config_checkpoints_metrics_and_summary(stages):
    mid = stages / "mid"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss_curve.png", "3", "6"):
        assert (mid / name).exists(), name
    assert any((mid / "tensorboard").iterdir())
    summary = json.loads((mid / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["tokens_seen"] == 6 * 4 * 64 and summary["final_loss"] > 0
    records = [json.loads(line) for line in (mid / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]


def test_sft_starts_from_the_midtraining_weights_and_trains_only_the_adapter(stages):
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(stages / "mid"))
    target = nnx.to_pure_dict(abstract_model(cfg, make_mesh(MeshConfig(data=1, fsdp=1, tensor=1)))[1])
    mid = checkpoint.restore_params(stages / "mid", target)
    sft = checkpoint.restore_params(stages / "sft", target)
    for a, b in zip(jax_leaves(mid), jax_leaves(sft)):
        np.testing.assert_array_equal(a, b)  # the base stays the midtrained model, bit for bit
    assert checkpoint.read_meta(stages / "sft")["lora"]["rank"] == 4


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_both_stages_export_to_hugging_face_with_logit_parity(stages, shards, tmp_path, jax_cache_dir):
    pytest.importorskip("transformers")
    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.hf.peft import ADAPTER_WEIGHTS, export_peft_adapter, merge_lora_checkpoint
    from msm_jax.hf.verify import verify_parity

    orbax_to_hf(stages / "mid", tmp_path / "mid_hf")
    assert verify_parity(stages / "mid", tmp_path / "mid_hf") < 1e-3
    merged = merge_lora_checkpoint(stages / "sft", tmp_path / "sft_merged")
    orbax_to_hf(merged, tmp_path / "sft_hf")
    assert verify_parity(stages / "sft", tmp_path / "sft_hf") < 1e-3  # load_model merges the adapter
    assert (export_peft_adapter(stages / "sft", tmp_path / "sft_adapter") / ADAPTER_WEIGHTS).is_file()

    # A stage started from the exported HF directory trains exactly like one started from
    # the checkpoint it was exported from.
    msm_train(jax_cache_dir, REPO / "configs/train/tiny-sft.yaml", "init.from_checkpoint=null",
              f"init.from_hf={tmp_path / 'mid_hf'}", *sft_overrides(tmp_path / "sft_from_hf", shards))
    from_hf, from_ckpt = losses(tmp_path / "sft_from_hf"), losses(stages / "sft")
    assert sorted(from_hf) == sorted(from_ckpt)
    for step in from_ckpt:
        assert from_hf[step] == pytest.approx(from_ckpt[step], rel=1e-5), step
