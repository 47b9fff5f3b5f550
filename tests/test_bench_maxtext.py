"""tools/bench_maxtext.py without MaxText: its arguments, the MaxText overrides it builds from an msm-jax
config, the parsing of MaxText's step log, and a clear error where the interpreter lacks MaxText."""

import json
import os
import subprocess
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


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--steps", "0"], ["--maxtext-scan", "maybe"],
                                  ["--configs", "9M"], ["--configs", ","]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        bench_maxtext.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_an_interpreter_without_maxtext_is_named_in_the_error(tmp_path):
    with pytest.raises(SystemExit, match="--maxtext-python .*cannot import maxtext"):
        bench_maxtext.maxtext_info(sys.executable)
    with pytest.raises(SystemExit, match="cannot run it"):
        bench_maxtext.maxtext_info(str(tmp_path / "no-such-python"))


FAKE_TRAIN = '''"""A stand-in for MaxText's trainer: records its arguments, logs steps as MaxText does."""
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[2:])
with open(os.environ["FAKE_MAXTEXT_RECORD"], "a") as f:
    f.write(json.dumps({"config": sys.argv[1], "args": args, "decoupled": os.environ.get("DECOUPLE_GCLOUD")}) + "\\n")
if os.environ.get("FAKE_MAXTEXT_FAIL"):
    print("Traceback: something MaxText did not like", file=sys.stderr)
    sys.exit(3)
for i in range(int(args["steps"])):
    seconds = 3.0 if i == 0 else 1.5
    print(f"I1203 metric_logger.py:265] completed step: {i}, seconds: {seconds:.3f}, TFLOP/s/device: 0.1", file=sys.stderr)
'''


@pytest.fixture
def fake_maxtext(tmp_path, monkeypatch):
    """A `maxtext` package (version 0.2.5) whose trainer only logs steps, on PYTHONPATH."""
    root = tmp_path / "site"
    pkg = root / "maxtext"
    (pkg / "trainers" / "pre_train").mkdir(parents=True)
    (pkg / "configs").mkdir()
    for init in (pkg, pkg / "trainers", pkg / "trainers" / "pre_train"):
        (init / "__init__.py").write_text("")
    (pkg / "configs" / "base.yml").write_text("")
    (pkg / "trainers" / "pre_train" / "train.py").write_text(FAKE_TRAIN)
    dist = root / "maxtext-0.2.5.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: maxtext\nVersion: 0.2.5\n")
    record = tmp_path / "record.jsonl"
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(repo)]))
    monkeypatch.setenv("FAKE_MAXTEXT_RECORD", str(record))
    return record


def test_a_failing_maxtext_run_stops_the_benchmark_with_its_log(fake_maxtext, monkeypatch):
    info = bench_maxtext.maxtext_info(sys.executable)
    assert info["maxtext"] == "0.2.5"
    monkeypatch.setenv("FAKE_MAXTEXT_FAIL", "1")
    with pytest.raises(SystemExit, match="(?s)MaxText exited with 3.*something MaxText did not like"):
        bench_maxtext.run_maxtext(sys.executable, str(Path(info["dir"]) / "configs" / "base.yml"), ["steps=2"], 60)


def test_end_to_end_against_a_stand_in_maxtext(fake_maxtext, monkeypatch):
    """The whole script on one config: MaxText's logged steps past the warm-up, ours timed as many, one
    MaxText process per round with the overrides and DECOUPLE_GCLOUD, the ratio of the medians."""
    monkeypatch.setenv("MSM_HUGE_PAGES", "0")
    script = Path(__file__).resolve().parent.parent / "tools" / "bench_maxtext.py"
    done = subprocess.run([sys.executable, str(script), "--configs", "5.28M", "--rounds", "2", "--steps", "2",
                           "--warmup", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result["configs"]) == ["5.28M"]
    row = result["configs"]["5.28M"]
    assert row["maxtext_times"] == [1.5] * 4  # step 0 (3.0 s, compilation) is never counted
    assert len(row["msm_jax_times"]) == 4 and all(t > 0 for t in row["msm_jax_times"])
    assert row["speedup_vs_maxtext"] == pytest.approx(1.5 / row["msm_jax_step_s"])
    assert result["maxtext"]["maxtext"] == "0.2.5"
    calls = [json.loads(line) for line in fake_maxtext.read_text().splitlines()]
    assert len(calls) == 2 and all(c["decoupled"] == "TRUE" and c["config"].endswith("base.yml") for c in calls)
    assert calls[0]["args"]["steps"] == "3" and calls[0]["args"]["base_emb_dim"] == "256"
