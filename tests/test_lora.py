"""LoRA: adapters only get optimizer state, merging equals the unmerged forward, and the
exported PEFT adapter (and the merged export) give our logits in transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from msm_jax import checkpoint
from msm_jax.config import load_config, to_dict
from msm_jax.models.config import ModelConfig
from msm_jax.models.decoder import Decoder
from msm_jax.models.lora import LoRAConfig, LoRAParam, apply_lora, lora_adapters, merge_lora
from msm_jax.sharding import MeshConfig, make_mesh
from msm_jax.train.optimizer import decay_mask, learning_rate, make_optimizer
from msm_jax.train.config import OptimizerConfig, ScheduleConfig
from msm_jax.train.state import TrainSpec

LORA = LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"))


@pytest.fixture(scope="module")
def model_cfg():
    return load_config(ModelConfig, "configs/models/tiny-qwen3.yaml")


def adapted_model(cfg, seed=0):
    """A LoRA model whose B matrices are non-zero, so the adapters change the output."""
    model = apply_lora(Decoder(cfg, nnx.Rngs(seed)), LORA, seed=seed)
    for i, (_, lora) in enumerate(lora_adapters(model)):
        lora.b[...] = 0.05 * jax.random.normal(jax.random.key(100 + i), lora.b[...].shape)
    return model


def test_only_lora_params_get_optimizer_state(model_cfg):
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1))
    spec = TrainSpec.create(model_cfg, LORA, mesh, MeshConfig().resolved_rules())
    schedule = learning_rate(OptimizerConfig(), ScheduleConfig(), 10)
    tx = make_optimizer(OptimizerConfig(), schedule, decay_mask(spec.abstract_trainable))
    state = spec.abstract_state(tx)  # shapes and shardings, nothing computed
    lora_shapes = sorted(x.shape for x in jax.tree.leaves(nnx.state(adapted_model(model_cfg), LoRAParam)))
    moment_shapes = sorted(x.shape for x in jax.tree.leaves(state["opt_state"]) if len(x.shape) > 0)
    assert moment_shapes == sorted(lora_shapes * 2)  # Adam's mu and nu, adapters only
    leaf_names = lambda tree: {str(path[-1].key) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    assert leaf_names(state["trainable"]) == {"a", "b"}
    assert leaf_names(state["frozen"]) == {"embed_tokens", "kernel", "scale"}  # base model: no optimizer state


def test_merged_model_equals_unmerged_forward(model_cfg):
    model = adapted_model(model_cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 500, (2, 16)), jnp.int32)
    plain = Decoder(model_cfg, nnx.Rngs(0))(tokens)
    unmerged = model(tokens)
    assert float(jnp.abs(unmerged - plain).max()) > 1e-3  # the adapters matter
    merged = merge_lora(model)(tokens)
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=2e-5, rtol=1e-5)


def save_lora_checkpoint(directory, model):
    base = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    adapters = nnx.to_pure_dict(nnx.state(model, LoRAParam))
    meta = checkpoint.make_meta(model.cfg, lora=to_dict(LORA))
    with checkpoint.manager(directory, item_names=checkpoint.TRAIN_ITEMS) as mngr:
        mngr.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(base),
                                             lora=ocp.args.StandardSave(adapters), meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()


def test_load_model_of_a_lora_checkpoint_is_the_merged_model(tmp_path, model_cfg):
    model = adapted_model(model_cfg)
    save_lora_checkpoint(tmp_path / "ckpt", model)
    tokens = jnp.asarray(np.arange(12)[None], jnp.int32)
    loaded, meta = checkpoint.load_model(tmp_path / "ckpt")
    assert meta["lora"]["rank"] == 4 and loaded.layers.self_attn.q_proj.lora is None
    np.testing.assert_allclose(np.asarray(loaded(tokens)), np.asarray(model(tokens)), atol=2e-5, rtol=1e-5)


def test_peft_adapter_and_merged_export_match_our_logits_in_transformers(tmp_path, model_cfg):
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from msm_jax.hf.export_hf import orbax_to_hf
    from msm_jax.hf.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, export_peft_adapter, merge_lora_checkpoint
    from msm_jax.hf.verify import hf_logits, msm_logits, random_batch

    model = adapted_model(model_cfg)
    save_lora_checkpoint(tmp_path / "ckpt", model)
    base_dir = orbax_to_hf(tmp_path / "ckpt", tmp_path / "base", merge_lora=False)  # the frozen base
    adapter_dir = export_peft_adapter(tmp_path / "ckpt", tmp_path / "adapter", base_model=str(base_dir))
    assert (adapter_dir / ADAPTER_CONFIG).is_file() and (adapter_dir / ADAPTER_WEIGHTS).is_file()

    tokens, mask = random_batch(model_cfg.vocab_size)
    ours = msm_logits(model, tokens, mask)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long),
                            position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours - theirs)[real].max() < 1e-4 * max(1.0, np.abs(theirs).max())

    merged_dir = orbax_to_hf(merge_lora_checkpoint(tmp_path / "ckpt", tmp_path / "merged"), tmp_path / "merged_hf")
    merged = hf_logits(merged_dir, tokens, mask)
    assert np.abs(ours - merged)[real].max() < 1e-4 * max(1.0, np.abs(merged).max())
    # A plain export of a LoRA run merges the adapter by itself.
    direct = hf_logits(orbax_to_hf(tmp_path / "ckpt", tmp_path / "direct_hf"), tokens, mask)
    np.testing.assert_array_equal(direct, merged)


def test_convert_cli_exports_a_peft_adapter_with_verified_parity(tmp_path, model_cfg, capsys):
    pytest.importorskip("peft")
    from msm_jax.cli import main as msm

    save_lora_checkpoint(tmp_path / "ckpt", adapted_model(model_cfg))
    ckpt, base, adapter = (str(tmp_path / n) for n in ("ckpt", "base", "adapter"))
    assert msm(["convert", "orbax-to-hf", ckpt, base, "--lora-base-only"]) == 0
    assert msm(["convert", "lora-to-peft", ckpt, adapter, "--base-model", base, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: max |logit difference| msm-jax vs transformers+PEFT" in out
    assert msm(["convert", "lora-to-peft", str(tmp_path / "missing"), adapter]) == 1
