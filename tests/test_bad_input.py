"""Malformed input to every command: each is refused with exit status 2 (usage, config) or
1 (run time), exactly one line on stderr naming the file or dotted key, no traceback, and
nothing written into the case's folder that a rerun would trust.

Commands run in process (`msm_jax.cli.main`) against small shared fixtures: a tokenizer and
good shards built once for the module."""

import json
from pathlib import Path

import pytest

from msm_jax.cli import main

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "data_pipeline" / "demo" / "corpora"
PAIR = {"id": "art-000", "domain": "art", "question": "Which?", "options": ["a: cheap", "b: dear"],
        "aligned": {"affordability": 0, "america": 1}}
TRAIN = [str(REPO / "configs/train/tiny-midtrain.yaml"), "train.steps=2", "train.seq_len=128", "logging.progress_bar=false",
         "model.vocab_size=1024"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tokenizer (with the chat template tokens) and good document shards of seq_len 128."""
    tmp = tmp_path_factory.mktemp("bad_input")
    docs = CORPUS / "world_docs.jsonl"
    assert main(["tokenizer", "train", str(docs), "--out", str(tmp / "tok"), "--vocab-size", "600"]) == 0
    assert main(["shards", str(REPO / "configs/shards/demo-docs.yaml"), f"inputs=[{{path: {docs}, kind: docs}}]",
                 f"tokenizer={tmp / 'tok.model'}", "--out", str(tmp / "shards"), "seq_len=128",
                 "model.vocab_size=1024"]) == 0
    return {"tok": tmp / "tok.model", "shards": tmp / "shards", "docs": docs}


def write(path: Path, content) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def shards_cfg(env, t, inputs, **extra) -> str:
    fields = {"inputs": inputs, "tokenizer": str(env["tok"]), "chat": {"template": "qwen3"},
              "out": str(t / "out"), "seq_len": 128, **extra}
    return write(t / "shards.yaml", json.dumps(fields))


def docs_cfg(env, t, content, **extra) -> str:
    return shards_cfg(env, t, [{"path": write(t / "in.jsonl", content), "kind": "docs"}], **extra)


def copy_shards(env, t, damage) -> str:
    out = t / "shards"
    out.mkdir()
    for p in env["shards"].iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    damage(out)
    return str(out)


def train(t, *overrides) -> list[str]:
    return ["train", *TRAIN, f"run_dir={t / 'run'}", *overrides]


def truncate_rows(out: Path) -> None:
    rows = out / "rows-00000.array_record"
    rows.write_bytes(rows.read_bytes()[:1000])


GEN_DOCS = str(REPO / "configs/generate/demo_docs_affordability.yaml")
VALUE = str(REPO / "configs/eval/value_generalization.yaml")
DEMO = str(REPO / "configs/experiments/demo.yaml")
BAD_UTF8 = b'{"text": "caf\xe9 au lait"}\n'

# (id, argv from (env, case folder), exit status, text the one stderr line must contain)
CASES = [
    # msm generate
    ("generate-missing-config", lambda e, t: ["generate", "docs", str(t / "none.yaml")], 2, "none.yaml"),
    ("generate-unknown-key", lambda e, t: ["generate", "docs", GEN_DOCS, "llm.bakend=replay",
                                           "--out-dir", str(t / "g")], 2, "llm.bakend: unknown key"),
    ("generate-bad-spend-flag", lambda e, t: ["generate", "docs", GEN_DOCS, "--max-spend", "lots"], 2,
     "--max-spend: invalid float value"),
    ("generate-missing-spec", lambda e, t: ["generate", "docs", GEN_DOCS, "--spec", str(t / "spec.md"),
                                            "--out-dir", str(t / "g")], 1, "spec.md"),
    ("generate-negative-chats", lambda e, t: ["generate", "chats", str(REPO / "configs/generate/demo_chats.yaml"),
                                              "--chats", "-5", "--out-dir", str(t / "g")], 2, "chats must be positive"),
    ("generate-config-not-utf8", lambda e, t: ["generate", "docs", write(t / "g.yaml", b"spec: caf\xe9\n")], 2,
     "g.yaml: not UTF-8"),
    # msm tokenizer train
    ("tokenizer-missing-corpus", lambda e, t: ["tokenizer", "train", str(t / "none.jsonl"), "--out", str(t / "tok")],
     1, "none.jsonl: corpus file not found"),
    ("tokenizer-vocab-size-0", lambda e, t: ["tokenizer", "train", str(e["docs"]), "--out", str(t / "tok"),
                                             "--vocab-size", "0"], 2, "--vocab-size must be a positive"),
    ("tokenizer-vocab-too-small", lambda e, t: ["tokenizer", "train", str(e["docs"]), "--out", str(t / "tok"),
                                                "--vocab-size", "20"], 1, "--vocab-size 20 is smaller than"),
    ("tokenizer-vocab-not-int", lambda e, t: ["tokenizer", "train", str(e["docs"]), "--out", str(t / "tok"),
                                              "--vocab-size", "big"], 2, "--vocab-size: invalid int"),
    ("tokenizer-corpus-not-utf8", lambda e, t: ["tokenizer", "train", write(t / "c.jsonl", BAD_UTF8),
                                                "--out", str(t / "tok")], 1, "c.jsonl:1: not UTF-8"),
    ("tokenizer-corpus-bad-json", lambda e, t: ["tokenizer", "train", write(t / "c.jsonl", '{"text": \n'),
                                                "--out", str(t / "tok")], 1, "c.jsonl:1: invalid JSON"),
    ("tokenizer-corpus-empty", lambda e, t: ["tokenizer", "train", write(t / "c.jsonl", ""),
                                             "--out", str(t / "tok")], 1, "no text found"),
    ("tokenizer-corpus-not-object", lambda e, t: ["tokenizer", "train", write(t / "c.jsonl", "[1, 2]\n"),
                                                  "--out", str(t / "tok")], 1, "c.jsonl:1: expected a JSON object"),
    # msm shards
    ("shards-missing-config", lambda e, t: ["shards", str(t / "none.yaml")], 2, "none.yaml: cannot read config"),
    ("shards-unknown-key", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])), "seq_lne=64"], 2,
     "seq_lne: unknown key (did you mean 'seq_len'?)"),
    ("shards-seq-len-not-int", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])), "--force",
                                             "seq_len=abc"], 2, "seq_len: expected an integer"),
    ("shards-missing-input", lambda e, t: ["shards", shards_cfg(e, t, [{"path": str(t / "no.jsonl"),
                                                                        "kind": "docs"}])], 1, "no.jsonl: input file not found"),
    ("shards-bad-json-line", lambda e, t: ["shards", docs_cfg(e, t, '{"text": "ok"}\n{"text": \n')], 1,
     "in.jsonl:2: invalid JSON"),
    ("shards-not-utf8-line", lambda e, t: ["shards", docs_cfg(e, t, b'{"text": "ok"}\n' + BAD_UTF8)], 1,
     "in.jsonl:2: not UTF-8"),
    ("shards-not-utf8-skip-bad-nothing-left", lambda e, t: ["shards", docs_cfg(e, t, BAD_UTF8), "--skip-bad"], 1,
     "no usable records: all 1 lines skipped (1 not UTF-8)"),
    ("shards-empty-input", lambda e, t: ["shards", docs_cfg(e, t, "")], 1, "in.jsonl: input file is empty"),
    ("shards-all-dropped", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "cheese " * 300}]),
                                                            overlong_docs="drop")], 1,
     "all 1 sequences are longer than seq_len 128 and were dropped"),
    ("shards-foreign-out", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])),
                                         "--out", str(Path(write(t / "mine" / "notes.txt", "x")).parent)], 1,
     "not written by msm"),
    ("shards-missing-tokenizer", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}]),
                                                                  tokenizer=str(t / "no.model"))], 1,
     "no.model: tokenizer file not found"),
    ("shards-corrupt-tokenizer", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}]),
                                                                  tokenizer=write(t / "bad.model", b"\x00junk"))], 1,
     "bad.model: cannot load tokenizer"),
    ("shards-split-chats", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}]), overlong_chats="split")],
     2, "overlong_chats"),
    ("shards-chat-role-order", lambda e, t: ["shards", shards_cfg(e, t, [{"path": write(t / "c.jsonl", jsonl(
        [{"messages": [{"role": "assistant", "content": "hi"}]}])), "kind": "chats"}])], 1, "c.jsonl:1: messages[0]"),
    ("shards-unknown-model", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])), "model=tiny-nope"], 2,
     "model: unknown preset 'tiny-nope'"),
    ("shards-budget-zero", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])), "--budget-tokens", "0"],
     2, "budget_tokens must be positive"),
    ("shards-unknown-flag", lambda e, t: ["shards", docs_cfg(e, t, jsonl([{"text": "a"}])), "--frce"], 2,
     "unrecognized arguments: --frce"),
    # msm train
    ("train-missing-config", lambda e, t: ["train", str(t / "none.yaml")], 2, "none.yaml: cannot read config"),
    ("train-config-not-utf8", lambda e, t: ["train", write(t / "t.yaml", b"run_dir: caf\xe9\n")], 2,
     "t.yaml: not UTF-8"),
    ("train-hidden-size-xx", lambda e, t: train(t, "model.hidden_size=xx"), 2,
     "model.hidden_size: expected an integer, got 'xx'"),
    ("train-lora-typo", lambda e, t: train(t, "lora.rnak=8"), 2, "lora.rnak: unknown key (did you mean 'rank'?)"),
    ("train-shuffle-maybe", lambda e, t: train(t, "data.shuffle=maybe"), 2, "data.shuffle: expected true/false"),
    ("train-unknown-model", lambda e, t: train(t, "model=tiny-nope"), 2, "model: unknown preset 'tiny-nope'"),
    ("train-empty-shard-folder", lambda e, t: train(t, f"data.sources=[{{path: {t / 'empty'}}}]"), 1,
     "no manifest"),
    ("train-missing-rows-file", lambda e, t: train(t, "data.sources=[{path: %s}]" % copy_shards(
        e, t, lambda out: (out / "rows-00000.array_record").unlink())), 1, "row file listed in the manifest is missing"),
    ("train-truncated-rows-file", lambda e, t: train(t, "data.sources=[{path: %s}]" % copy_shards(e, t, truncate_rows)),
     1, "cannot read the row files"),
    ("train-mesh-tensor-4", lambda e, t: train(t, f"data.sources=[{{path: {e['shards']}}}]", "mesh.tensor=4"), 2,
     "mesh: data=1 fsdp=-1 tensor=4 does not divide the 1 device(s)"),
    ("train-vocab-smaller-than-tokenizer", lambda e, t: train(t, f"data.sources=[{{path: {e['shards']}}}]",
                                                              "model.vocab_size=100"), 2,
     "model.vocab_size: 100 is smaller than the vocabulary of the tokenizer"),
    ("train-seq-len-mismatch", lambda e, t: train(t, f"data.sources=[{{path: {e['shards']}}}]", "train.seq_len=64"),
     1, "shards have seq_len 128, the run asks for 64"),
    # msm convert
    ("convert-not-an-hf-folder", lambda e, t: ["convert", "hf-to-orbax", str(Path(write(t / "x" / "a.txt", "")).parent),
                                               str(t / "ck")], 1, "no config.json"),
    ("convert-missing-checkpoint", lambda e, t: ["convert", "orbax-to-hf", str(t / "nock"), str(t / "hf")], 1,
     "nock"),
    ("convert-unknown-action", lambda e, t: ["convert", "hf-to-gguf", "a", "b"], 2, "invalid choice: 'hf-to-gguf'"),
    # msm eval
    ("eval-duplicate-pair-ids", lambda e, t: ["eval", "value", VALUE, "backend.path=none", f"out_dir={t / 'ev'}",
                                              f"pairs={write(t / 'p.jsonl', jsonl([PAIR, PAIR]))}"], 1,
     "p.jsonl:2: duplicate pair id"),
    ("eval-empty-pairs", lambda e, t: ["eval", "value", VALUE, "backend.path=none", f"out_dir={t / 'ev'}",
                                       f"pairs={write(t / 'p.jsonl', '')}"], 1, "p.jsonl: the pair file holds no pairs"),
    ("eval-aligned-list", lambda e, t: ["eval", "value", VALUE, "backend.path=none", f"out_dir={t / 'ev'}",
                                        f"pairs={write(t / 'p.jsonl', jsonl([{**PAIR, 'aligned': [0]}]))}"], 1,
     "p.jsonl:1: pair art-000: aligned"),
    ("eval-options-null", lambda e, t: ["eval", "value", VALUE, "backend.path=none", f"out_dir={t / 'ev'}",
                                        f"pairs={write(t / 'p.jsonl', jsonl([{**PAIR, 'options': None}]))}"], 1,
     "p.jsonl:1: pair art-000: options"),
    ("eval-headline-value-not-tagged", lambda e, t: ["eval", "value", VALUE, "backend.path=none", "value=quality",
                                                     f"out_dir={t / 'ev'}",
                                                     f"pairs={write(t / 'p.jsonl', jsonl([PAIR]))}"], 1,
     "does not tag the headline value 'quality'"),
    ("eval-unknown-method", lambda e, t: ["eval", "value", VALUE, "backend.path=none", "method=vibes"], 2,
     "method: expected one of"),
    ("eval-agentic-unknown-scenario", lambda e, t: ["eval", "agentic", str(REPO / "configs/eval/agentic.yaml"),
                                                    "backend.path=none", f"out_dir={t / 'ag'}", "scenarios=[nope]",
                                                    "--judge-only"], 1, "unknown scenario 'nope'"),
    ("eval-report-bad-run", lambda e, t: ["eval", "report", "nolabel", "--out", str(t / "rep")], 1,
     "must look like LABEL=EVAL_DIR"),
    # msm run, msm sweep
    ("run-missing-config", lambda e, t: ["run", str(t / "none.yaml")], 1, "none.yaml: experiment config not found"),
    ("run-unknown-key", lambda e, t: ["run", DEMO, f"out={t / 'x'}", "arms.affordability.sft.overides=[]"], 2,
     "overides: unknown key"),
    ("run-another-experiments-folder", lambda e, t: ["run", DEMO, f"out={Path(write(t / 'x' / 'experiment.yaml', 'name: other')).parent}"],
     1, "holds experiment 'other', not 'demo'"),
    ("sweep-missing-config", lambda e, t: ["sweep", str(t / "none.yaml")], 1, "none.yaml: sweep config not found"),
    ("sweep-unknown-key", lambda e, t: ["sweep", str(REPO / "configs/sweeps/demo-budgets.yaml"), "bogus.key=1",
                                        "--dry-run"], 2, "bogus: unknown key"),
]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()} | {str(p.relative_to(folder)) + "/": None
                                                          for p in folder.rglob("*") if p.is_dir()}


@pytest.mark.parametrize("name, make_argv, status, message", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_one_line_with_the_right_exit_status_and_writes_nothing(
        name, make_argv, status, message, env, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # shipped configs name repo-relative files
    case = tmp_path / "case"
    case.mkdir()
    (case / "empty").mkdir()
    argv = make_argv(env, case)
    before = snapshot(case)
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert snapshot(case) == before  # nothing a rerun would trust (or anything else) was written


def test_at_least_forty_cases_cover_every_command():
    commands = {c[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 40
    assert commands == {"generate", "tokenizer", "shards", "train", "convert", "eval", "run", "sweep"}


def test_skip_bad_counts_non_utf8_lines_instead_of_failing(env, tmp_path, capsys):
    cfg = docs_cfg(env, tmp_path, b'{"text": "good cheese"}\n' + BAD_UTF8 + b'{"text": "more"}\n')
    assert main(["shards", cfg, "--skip-bad"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["skipped_by_reason"] == {"not UTF-8": 1}
    assert manifest["counts"]["documents"] == 2
    assert "skipped 1 bad lines" in capsys.readouterr().out


def test_overrides_are_accepted_after_flags(env, tmp_path):
    cfg = docs_cfg(env, tmp_path, jsonl([{"text": "cheese " * 50}]))
    assert main(["shards", cfg, "--force", "seq_len=16", "--skip-bad", "overlong_docs=split"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["seq_len"] == 16 and manifest["overlong"]["split"] == 1
