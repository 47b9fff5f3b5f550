"""HF import, export, LoRA merge and PEFT export on a mesh: one process with 8 devices and two
processes of 4 devices (jax.distributed over 127.0.0.1) produce exactly the tensors and files
of a single-device run, and each of the two processes reads only its half of the weights."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import free_port, jax_cache_dir, worker_env  # noqa: F401

from hf_fixtures import make_hf_model
from msm_jax import checkpoint
from msm_jax.hf.export_hf import CheckpointArrays
from msm_jax.hf.names import tensor_maps
from msm_jax.hf.safetensors_io import SafetensorsReader

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow
WORKER = Path(__file__).parent / "convert_worker.py"


def start_workers(cache_dir, processes: int, devices: int, **args) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen([sys.executable, str(WORKER), json.dumps(dict(args, process_id=i, num_processes=processes,
                                                                             port=port))],
                             env=worker_env(cache_dir, devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for i in range(processes)]


def results(procs: list[subprocess.Popen]) -> list[dict]:
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jax_cache_dir):
    from test_lora import adapted_model, save_lora_checkpoint

    from msm_jax.config import load_config
    from msm_jax.models.config import ModelConfig

    root = tmp_path_factory.mktemp("hf-multihost")
    make_hf_model("llama", root / "hf", tie=False)
    save_lora_checkpoint(root / "lora", adapted_model(load_config(ModelConfig, "configs/models/tiny-qwen3.yaml")))
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("not msm's")
    common = dict(hf_dir=str(root / "hf"), lora_ckpt=str(root / "lora"), foreign=str(root / "foreign"))
    started = [start_workers(jax_cache_dir, processes, devices, out=str(root / name), **common)
               for name, processes, devices in (("one-device", 1, 1), ("1x8", 1, 8), ("2x4", 2, 4))]
    _, eight, pod = (results(procs) for procs in started)  # one device: same XLA flags as the others
    return root, eight, pod


def checkpoint_arrays(ckpt_dir) -> dict:
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt_dir))
    arrays = CheckpointArrays(ckpt_dir, 0)
    return {tm.key: np.asarray(arrays.array(tm.key).read().result()) for tm in tensor_maps(cfg)}


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize("layout", ["1x8", "2x4"])
def test_import_on_a_mesh_stores_the_single_device_tensors(runs, layout):
    root, eight, pod = runs
    assert (eight if layout == "1x8" else pod)[0]["devices"] == 8
    expected, got = checkpoint_arrays(root / "one-device" / "ckpt"), checkpoint_arrays(root / layout / "ckpt")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_each_of_two_processes_reads_only_its_half_of_the_weights(runs):
    root, _, pod = runs
    reader = SafetensorsReader(root / "hf")
    total = sum(reader.get(name).nbytes for name in reader.names())
    assert [r["processes"] for r in pod] == [2, 2]
    for r in pod:
        assert 0.45 * total < r["bytes_read"] < 0.55 * total, (r["bytes_read"], total)


@pytest.mark.parametrize("layout", ["1x8", "2x4"])
@pytest.mark.parametrize("export", ["hf", "merged_hf", "peft"])
def test_exports_from_a_mesh_write_the_single_device_files_once(runs, layout, export):
    root = runs[0]
    assert files(root / layout / export) == files(root / "one-device" / export)
    assert not list(root.glob(f"{layout}/*.merged-ckpt"))  # the temporary merge is gone


def test_a_refusal_on_process_0_fails_every_process_with_its_message(runs):
    root, _, pod = runs
    assert "not empty and was not written by msm" in pod[0]["error"]
    assert pod[1]["error"] == f"export failed on process 0: {pod[0]['error']}"
    assert sorted(p.name for p in (root / "foreign").iterdir()) == ["notes.txt"]
