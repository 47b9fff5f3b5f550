"""Checkpoints and failures: kill -9 and resume reproduces the uninterrupted losses bit for
bit; SIGTERM writes a final checkpoint; a partial checkpoint is skipped with a warning."""

import shutil

from train_fixtures import REFERENCE_OVERRIDES, jax_cache_dir, losses, reference_run, run_worker  # noqa: F401

from msm_jax import checkpoint


def test_resume_after_sigkill_matches_uninterrupted_losses_bitwise(tmp_path, jax_cache_dir, reference_run):
    _, expected = reference_run
    run_dir = tmp_path / "run"
    # Killed while asking for the batch of step 5: the checkpoint of step 4 may still be in flight.
    run_worker(jax_cache_dir, expect_rc=-9, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES, kill_at_step=5)
    assert max(losses(run_dir)) == 5
    summary, err = run_worker(jax_cache_dir, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES)
    assert summary["status"] == "completed" and summary["steps"] == len(expected)
    assert losses(run_dir) == expected  # bitwise: float equality, every step exactly once


def test_sigterm_writes_a_final_checkpoint_and_exits_143(tmp_path, jax_cache_dir):
    run_dir = tmp_path / "run"
    summary, _ = run_worker(jax_cache_dir, expect_rc=143, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES,
                            kill_at_step=4, kill_signal="SIGTERM")
    # SIGTERM arrived while step index 4 was loading: that step finishes and is
    # checkpointed as step 5, which the regular schedule (every 2 steps) would not write.
    assert summary["status"] == "preempted" and summary["steps"] == 5
    assert checkpoint.candidate_steps(run_dir)[:2] == [5, 4]


def test_partial_checkpoint_is_skipped_with_a_warning(tmp_path, jax_cache_dir, reference_run):
    ref_dir, expected = reference_run
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(run_dir / "8")  # as if steps 7-8 never happened ...
    shutil.copytree(run_dir / "6", run_dir / "8")  # ... but a broken step 8 was left behind
    shutil.rmtree(run_dir / "8" / "opt_state")
    (run_dir / "10.orbax-checkpoint-tmp-1234").mkdir()  # and an unfinished async save
    summary, err = run_worker(jax_cache_dir, run_dir=str(run_dir), overrides=REFERENCE_OVERRIDES)
    assert "checkpoint step 8 is incomplete or corrupt" in err
    assert "partially written checkpoint" in err
    assert (run_dir / "8.broken").is_dir()  # kept for inspection, out of the way of the new step 8
    assert summary["steps"] == 8
    assert losses(run_dir) == expected
