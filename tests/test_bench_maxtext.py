"""tools/bench_maxtext.py without MaxText: its arguments, the MaxText overrides it builds from an msm-jax
config, the parsing of MaxText's step log, and a clear error where the interpreter lacks MaxText."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_maxtext  # noqa: E402


def test_overrides_describe_the_same_model_batch_and_steps():
    args = bench_maxtext.parse_args(["--steps", "5", "--warmup", "2", "--maxtext-remat", "full"])
    cfg = bench_maxtext.reference_configs()["5.28M"]
    kv = dict(item.split("=", 1) for item in bench_maxtext.maxtext_overrides(cfg, args, 8, 256, "/tmp/x"))
    assert kv["base_emb_dim"] == "256" and kv["base_num_decoder_layers"] == "6"
    assert kv["base_num_query_heads"] == "8" and kv["base_num_kv_heads"] == "2" and kv["head_dim"] == "32"
    assert kv["base_mlp_dim"] == "704" and kv["vocab_size"] == "2048"
    assert kv["per_device_batch_size"] == "8" and kv["max_target_length"] == "256"
    assert kv["steps"] == "7"  # warm-up steps first, then the timed ones
    assert kv["dtype"] == kv["weight_dtype"] == "float32" and kv["remat_policy"] == "full"
    assert kv["logits_via_embedding"] == "false" and kv["enable_checkpointing"] == "false"
    big = dict(item.split("=", 1) for item in bench_maxtext.maxtext_overrides(
        bench_maxtext.reference_configs()["8.45M"], args, 8, 256, "/tmp/x"))
    assert big["vocab_size"] == "8000" and big["base_num_kv_heads"] == "4" and big["base_mlp_dim"] == "688"


def test_step_seconds_skips_the_warmup_steps():
    log = "\n".join([
        "I1203 metric_logger.py:265] completed step: 0, seconds: 0.072, TFLOP/s/device: 0.880",
        "I1203 metric_logger.py:265] completed step: 1, seconds: 0.343, TFLOP/s/device: 0.184",
        "unrelated line with seconds: 9.0",
        "I1203 metric_logger.py:265] completed step: 2, seconds: 1.295, TFLOP/s/device: 0.049",
        "I1203 metric_logger.py:265] completed step: 3, seconds: 1.042, TFLOP/s/device: 0.061",
    ])
    assert bench_maxtext.step_seconds(log, warmup=2) == [1.295, 1.042]
    assert bench_maxtext.step_seconds(log, warmup=4) == []


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--steps", "0"], ["--maxtext-scan", "maybe"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        bench_maxtext.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_an_interpreter_without_maxtext_is_named_in_the_error(tmp_path):
    with pytest.raises(SystemExit, match="--maxtext-python .*cannot import maxtext"):
        bench_maxtext.maxtext_info(sys.executable)
    with pytest.raises(SystemExit, match="cannot run it"):
        bench_maxtext.maxtext_info(str(tmp_path / "no-such-python"))
