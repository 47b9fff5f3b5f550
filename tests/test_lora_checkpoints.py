"""LoRA checkpoints hold what changes (adapter, optimizer state, train record) and reference
the frozen base by path and content hash; resume, merge and export load the base from that
reference and refuse one whose content changed. A stage started from a LoRA run continues
its adapter on the same base (init.adapter=continue) or merges it first (merge)."""

import json
import shutil

import jax
import numpy as np
import pytest
from train_fixtures import (REFERENCE_OVERRIDES, jax_cache_dir, loader_for, reference_run, run_config,  # noqa: F401
                            run_worker, sft_overrides, sft_reference_run)

from msm_jax import checkpoint
from msm_jax.errors import UserError


def meta_file(run_dir, step):
    return run_dir / str(step) / "meta" / "metadata"


def test_lora_checkpoint_holds_the_adapter_and_references_its_base(sft_reference_run, reference_run):
    sft, ref = sft_reference_run[0], reference_run[0]
    step = checkpoint.latest_step(sft)
    assert sorted(p.name for p in (sft / str(step)).iterdir() if p.is_dir()) == ["lora", "meta", "opt_state", "train"]
    base = checkpoint.read_meta(sft, step)["base"]
    assert base["path"] == str(ref) and base["step"] == 8 and base["relative"] == "../reference"
    assert base["hash"] == checkpoint.content_hash(ref, 8)
    assert checkpoint.lora_base(sft, step) == (str(ref), 8)


def sft_trainer(run_dir, *extra):
    from msm_jax.train.loop import Trainer

    cfg = run_config(run_dir, *extra)
    return Trainer(cfg, loader=loader_for(cfg, chats=True))


def test_a_replaced_base_is_refused_by_resume_merge_and_export(tmp_path, sft_reference_run, reference_run):
    from msm_jax.hf.export_hf import orbax_to_hf

    ref, sft = tmp_path / "reference", tmp_path / "sft"
    shutil.copytree(reference_run[0], ref)
    shutil.copytree(sft_reference_run[0], sft)
    step = checkpoint.latest_step(sft)
    model, _ = checkpoint.load_model(sft)  # the moved pair still resolves (relative path) ...
    assert checkpoint.lora_base(sft, step)[0] == str(ref)
    for s in checkpoint.candidate_steps(sft):  # ... now make the copy the only base it may use
        meta = json.loads(meta_file(sft, s).read_text())
        meta["base"]["path"] = str(ref)
        meta_file(sft, s).write_text(json.dumps(meta))
    shutil.rmtree(ref / "8")
    shutil.copytree(reference_run[0] / "6", ref / "8")  # another model where the base was
    before = sorted(p.name for p in sft.iterdir())
    with pytest.raises(UserError, match=r"its frozen base .*reference step 8 has content hash .* but the adapter "
                                        r"was trained on"):
        checkpoint.load_model(sft)  # what merge and export run
    with pytest.raises(UserError, match="content hash"):
        orbax_to_hf(sft, tmp_path / "hf", merge_lora=False)
    with pytest.raises(UserError, match="content hash"):
        sft_trainer(sft, *sft_overrides(reference_run[0]))._restore_or_init()  # resume
    assert sorted(p.name for p in sft.iterdir()) == before  # nothing set aside
    shutil.rmtree(ref)
    with pytest.raises(UserError, match=r"frozen base .* step 8 is missing"):
        checkpoint.load_model(sft)


def continued_overrides(source, adapter):
    return [*REFERENCE_OVERRIDES, f"init.from_checkpoint={source}", f"init.adapter={adapter}", "lora.rank=4",
            "lora.alpha=8.0", "optimizer.lr=1e-2", "train.steps=2", "checkpoint.every_steps=2"]


def test_continue_starts_from_the_adapter_on_the_same_base_and_merge_from_the_merged_model(
        tmp_path, sft_reference_run, reference_run):
    from flax import nnx

    from msm_jax.train.init import initial_weights

    sft = sft_reference_run[0]
    step = checkpoint.latest_step(sft)
    trainer = sft_trainer(tmp_path / "continue", *continued_overrides(sft, "continue"))
    adapters, base, where = initial_weights(trainer.cfg, trainer.spec)
    assert where == (str(reference_run[0]), 8)  # the midtraining checkpoint, not a copy
    saved = checkpoint.restore_lora(sft, nnx.to_pure_dict(trainer.spec.abstract_trainable), step)
    for a, b in zip(jax.tree.leaves(adapters), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    trainer = sft_trainer(tmp_path / "merge", *continued_overrides(sft, "merge"))
    fresh, merged, where = initial_weights(trainer.cfg, trainer.spec)
    assert where is None  # merged weights are new: the run saves them once as its base
    expected = checkpoint.params_of(checkpoint.load_model(sft)[0])
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    b_leaves = [x for path, x in jax.tree_util.tree_flatten_with_path(fresh)[0] if path[-1].key == "b"]
    assert b_leaves and not any(np.asarray(b).any() for b in b_leaves)  # a fresh adapter (B = 0)


@pytest.mark.slow
def test_continued_and_merged_stages_reference_their_base(tmp_path, jax_cache_dir, sft_reference_run):
    sft = sft_reference_run[0]
    runs = [{"run_dir": str(tmp_path / name), "chats": True, "overrides": continued_overrides(sft, name)}
            for name in ("continue", "merge")]
    run_worker(jax_cache_dir, runs=runs)
    source = checkpoint.read_meta(sft)["base"]
    continued = checkpoint.read_meta(tmp_path / "continue")["base"]
    assert (continued["path"], continued["step"], continued["hash"]) == (source["path"], source["step"], source["hash"])
    merged = checkpoint.read_meta(tmp_path / "merge")["base"]
    copies = [p for p in (tmp_path / "merge").iterdir() if p.name.startswith(checkpoint.BASE_PREFIX)]
    assert len(copies) == 1 and merged["path"] == str(copies[0]) and merged["relative"] == copies[0].name
    assert merged["hash"] == checkpoint.content_hash(copies[0], 0) != source["hash"]
