"""tools/bench_device.py: argument handling and a CPU dry run of every part."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_device  # noqa: E402


def test_unknown_part_is_one_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_device.parse_args(["--only", "attention,warp"])
    assert exc.value.code == 2
    assert "--only: unknown part(s) warp" in capsys.readouterr().err


def test_non_positive_shape_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        bench_device.parse_args(["--dry-run", "--seq", "-4"])
    assert exc.value.code == 2


def test_dry_run_defaults_are_tiny_and_full_run_defaults_are_the_1b_shapes():
    dry, full = bench_device.parse_args(["--dry-run"]), bench_device.parse_args([])
    assert (dry.batch, dry.seq, dry.parts) == (2, 64, list(bench_device.PARTS))
    assert (full.batch, full.seq) == (8, 2048)
    cfg = bench_device.model_config(bench_device.LLAMA_1B, "bfloat16")
    assert 1.1e9 < cfg.num_params() < 1.3e9


@pytest.mark.slow
def test_dry_run_on_cpu_fills_every_row_of_the_table(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = bench_device.main(["--dry-run", "--json", str(out), "--out", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert code == 0, printed
    assert set(result["parts"]) == set(bench_device.PARTS)
    assert result["parts"]["attention"]["status"] == "ok"
    assert result["parts"]["attention"]["max_abs_diff_grad"] == 0.0  # XLA against itself on CPU
    assert result["parts"]["mfu"]["status"] == "ok" and result["parts"]["mfu"]["tokens_per_s"] > 0
    assert result["parts"]["sampler"]["tokens_per_s"] > 0
    vllm_row = result["parts"]["vllm"]
    assert vllm_row["status"] in ("skipped", "ok")
    assert "| part | status | measured | note |" in printed
