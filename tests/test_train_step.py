"""The train step: gradient accumulation equals one big batch; a non-finite loss stops the
run naming the step (or skips the update) and never writes NaN weights."""

import jax
import numpy as np
import pytest
from train_fixtures import REFERENCE_OVERRIDES, jax_cache_dir, losses, reference_run, run_worker  # noqa: F401

from msm_jax import checkpoint


def test_gradient_accumulation_equals_one_big_batch(tmp_path, jax_cache_dir, reference_run):
    _, expected = reference_run
    run_dir = tmp_path / "run"
    run_worker(jax_cache_dir, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES + ["train.grad_accum=4"])
    got = losses(run_dir)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=2e-5, abs=2e-5), step


def test_nonfinite_loss_stops_with_a_message_naming_the_step(tmp_path, jax_cache_dir):
    run_dir = tmp_path / "run"
    # lr=1e30 turns the weights huge after step 1; the loss of step 2 overflows.
    _, err = run_worker(jax_cache_dir, expect_rc=1, run_dir=str(run_dir),
                        overrides=REFERENCE_OVERRIDES + ["optimizer.lr=1e30", "schedule.warmup_steps=0",
                                                         "checkpoint.every_steps=1"])
    assert list(losses(run_dir)) == [1]  # metrics.jsonl numbers steps from 1 ...
    assert "NonFiniteLoss: step 2: non-finite loss=" in err  # ... and the stop names the next one
    assert "no checkpoint was written after step 1" in err
    assert checkpoint.candidate_steps(run_dir) == [1]  # nothing written after the bad step


def test_skip_mode_skips_nonfinite_updates_and_weights_stay_finite(tmp_path, jax_cache_dir):
    run_dir = tmp_path / "run"
    summary, err = run_worker(jax_cache_dir, run_dir=str(run_dir),
                              overrides=REFERENCE_OVERRIDES + ["optimizer.lr=1e30", "schedule.warmup_steps=0",
                                                               "train.on_nonfinite=skip"])
    assert summary["status"] == "completed" and "update skipped" in err
    model, _ = checkpoint.load_model(run_dir)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(checkpoint.params_of(model)))
