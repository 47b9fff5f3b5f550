"""`msm shards`: exact, reproducible shards; bad lines named by file and line; nested exact budgets."""

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.budgets import select_budget
from data_pipeline.chat_templates import ChatConfig
from data_pipeline.packing import PackStats, fit_to_length, unpack
from data_pipeline.shards import InputConfig, ShardsConfig, build_shards, read_rows, tokenize_document
from data_pipeline.tokenizer import load_tokenizer, train_sentencepiece
from msm_jax.cli import main
from msm_jax.config import load_config

WORDS = "the cheese model spec value affordable american foreign price choice report memo honest".split()
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "shards"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    with open(tmp / "docs.jsonl", "w") as f:
        for i in range(120):
            words = rng.choice(WORDS, size=int(rng.integers(3, 200)))
            f.write(json.dumps({"text": f"Doc {i}: " + " ".join(words), "kind": "memo"}) + "\n")
    with open(tmp / "chats.jsonl", "w") as f:
        for i in range(40):
            answer = " ".join(rng.choice(WORDS, size=8))
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {i}: which is cheaper?"},
                {"role": "assistant", "content": f"<think>\nprice first {i}\n</think>\n\nAnswer {i}: {answer}"}]}) + "\n")
    model = train_sentencepiece([tmp / "docs.jsonl", tmp / "chats.jsonl"], tmp / "tok", vocab_size=400)
    return tmp, model


def config(data, kind, **kw):
    tmp, model = data
    kw.setdefault("chat", ChatConfig(template="qwen3"))
    return ShardsConfig(inputs=(InputConfig(path=str(tmp / f"{kind}.jsonl"), kind=kind),), out=str(tmp / "out"),
                        tokenizer=str(model), seq_len=128, pack_buffer=32, rows_per_file=10, **kw)


def files_of(directory):
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


def test_rebuild_with_same_inputs_and_config_is_byte_identical(data, tmp_path):
    cfg = config(data, "docs")
    a = dict(build_shards(ShardsConfig(**{**cfg.__dict__, "out": str(tmp_path / "a")})))
    b = dict(build_shards(ShardsConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})))
    assert a == b and len(a["files"]) > 1
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")


def test_unpacking_document_shards_gives_back_exactly_the_tokenized_documents(data, tmp_path):
    tmp, model = data
    cfg = ShardsConfig(**{**config(data, "docs").__dict__, "out": str(tmp_path / "docs")})
    manifest = build_shards(cfg)
    tok = load_tokenizer(model)
    texts = [json.loads(line)["text"] for line in open(tmp / "docs.jsonl")]
    docs = [tokenize_document(t, tok, "qwen3") for t in texts]
    expected = [p for d in docs for p in fit_to_length(d, 128, "split", PackStats())]
    unpacked = [s for row in read_rows(tmp_path / "docs") for s in unpack(row)]
    key = lambda s: (s.tokens.tolist(), s.loss_mask.tolist())  # noqa: E731
    assert sorted(map(key, unpacked)) == sorted(map(key, expected))
    assert all(d.tokens[-1] == tok.special_id("<|endoftext|>") for d in docs)
    counts = manifest["counts"]
    assert counts["documents"] == 120 and counts["tokens"] == sum(len(d) for d in docs)
    assert counts["loss_tokens"] == sum(int(p.loss_mask[1:].sum()) for p in expected)
    assert manifest["packing_efficiency"] == pytest.approx(counts["tokens"] / (manifest["num_rows"] * 128), abs=1e-6)
    assert manifest["overlong"]["split"] > 0 and manifest["inputs"][0]["metadata_keys"] == {"kind": 120}
    assert manifest["tokenizer"]["sha256"] and manifest["config_hash"]


@pytest.mark.parametrize("reasoning", ["keep", "drop"])
def test_chat_shards_train_on_assistant_tokens_only_for_cot_and_no_cot_from_one_file(data, tmp_path, reasoning):
    tmp, model = data
    cfg = config(data, "chats", chat=ChatConfig(template="qwen3", reasoning=reasoning))
    manifest = build_shards(ShardsConfig(**{**cfg.__dict__, "out": str(tmp_path / reasoning)}))
    tok = load_tokenizer(model)
    segments = [s for row in read_rows(tmp_path / reasoning) for s in unpack(row)]
    assert len(segments) == manifest["counts"]["sequences"] == 40
    for seg in segments:
        trained = tok.decode(seg.tokens[seg.loss_mask == 1])
        assert trained.startswith("<think>\nprice first" if reasoning == "keep" else "Answer ")
        assert trained.endswith("<|im_end|>") and "Question" not in trained and "<|im_start|>" not in trained


def test_malformed_line_is_reported_with_file_and_line_or_skipped_and_counted(data, tmp_path, capsys):
    tmp, model = data
    bad = tmp_path / "bad.jsonl"
    lines = open(tmp / "chats.jsonl").read().splitlines()
    lines[2] = '{"messages": [{"role": "user", "content": "x"}'  # cut off JSON
    lines[5] = json.dumps({"messages": [{"role": "assistant", "content": "first"}]})
    bad.write_text("\n".join(lines) + "\n")
    cfg_path = tmp_path / "shards.yaml"
    cfg_path.write_text(f"inputs: [{{path: {bad}, kind: chats}}]\ntokenizer: {model}\nchat: {{template: qwen2.5}}\n"
                        f"out: {tmp_path / 'out'}\nseq_len: 128\n")
    assert main(["shards", str(cfg_path)]) == 1
    assert f"{bad}:3: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["shards", str(cfg_path), "--skip-bad"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"][0]["skipped_by_reason"] == {"invalid JSON": 1, "role order": 1}
    assert manifest["counts"]["documents"] == 38


def test_failed_build_keeps_previous_shards_and_unchanged_build_is_skipped(data, tmp_path):
    cfg = ShardsConfig(**{**config(data, "docs").__dict__, "out": str(tmp_path / "s")})
    build_shards(cfg)
    before = files_of(tmp_path / "s")
    mtime = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    build_shards(cfg)
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == mtime
    broken = ShardsConfig(**{**cfg.__dict__, "tokenizer": str(tmp_path / "missing.model")})
    with pytest.raises(Exception, match="missing.model"):
        build_shards(broken)
    assert files_of(tmp_path / "s") == before


def test_budgets_are_nested_and_exact_to_one_document():
    lengths = np.random.default_rng(1).integers(1, 500, size=1000)
    previous = set()
    for budget in [1, 100, 999, 5000, 20000, 100000, int(lengths.sum())]:
        sel = select_budget(lengths, budget, seed=3)
        chosen = set(sel.indices.tolist())
        assert previous <= chosen
        assert sel.selected_tokens == int(lengths[sel.indices].sum())
        assert budget <= sel.selected_tokens < budget + int(lengths[sel.indices[-1]])
        previous = chosen
    assert select_budget(lengths, 5000, seed=4).indices.tolist() != select_budget(lengths, 5000, seed=3).indices.tolist()


def test_budget_shards_record_exact_count_and_are_nested(data, tmp_path):
    small = build_shards(ShardsConfig(**{**config(data, "docs").__dict__, "out": str(tmp_path / "small"),
                                         "budget_tokens": 1500}))
    large = build_shards(ShardsConfig(**{**config(data, "docs").__dict__, "out": str(tmp_path / "large"),
                                         "budget_tokens": 4000}))
    for manifest, n in [(small, 1500), (large, 4000)]:
        assert manifest["budget"]["requested_tokens"] == n
        assert manifest["counts"]["tokens"] == manifest["budget"]["selected_tokens"]
        assert n <= manifest["budget"]["selected_tokens"] < n + 128 * 2  # one document, at most ~210 tokens
    segs = lambda d: {tuple(s.tokens.tolist()) for r in read_rows(d) for s in unpack(r)}  # noqa: E731
    assert segs(tmp_path / "small") < segs(tmp_path / "large")


def test_example_shard_configs_load():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for path in paths:
        assert load_config(ShardsConfig, path).inputs


def test_model_preset_picks_the_template_and_bounds_the_vocab(data, tmp_path):
    tmp, model = data
    path = tmp_path / "s.yaml"
    path.write_text(f"inputs: [{{path: {tmp / 'chats.jsonl'}, kind: chats}}]\ntokenizer: {model}\nmodel: tiny-llama\n"
                    f"out: {tmp_path / 'out'}\nseq_len: 128\n")
    cfg = load_config(ShardsConfig, path)
    assert cfg.resolved_chat.template == "llama3.1"
    assert build_shards(cfg)["chat"]["template"] == "llama3.1"
    small = load_config(ShardsConfig, path, ["model.vocab_size=100"])
    with pytest.raises(Exception, match="more than the model's vocab_size 100"):
        build_shards(small)


def shards_yaml(tmp_path, data, kind="docs", **extra):
    tmp, model = data
    fields = {"inputs": [{"path": str(tmp / f"{kind}.jsonl"), "kind": kind}], "tokenizer": str(model),
              "chat": {"template": "qwen3"}, "out": str(tmp_path / "out"), "seq_len": 128, **extra}
    path = tmp_path / "shards.yaml"
    path.write_text(json.dumps(fields))
    return path


def test_out_folder_with_foreign_files_is_refused_and_overwrite_never_deletes_them(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = shards_yaml(tmp_path, data)
    assert main(["shards", str(cfg)]) == 1
    assert "not empty and was not written by msm" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["shards", str(cfg), "--overwrite", "rows_per_file=2"]) == 0
    many = json.loads((out / "manifest.json").read_text())["files"]
    assert len(many) > 3 and (out / "notes.txt").read_text() == "mine"
    # a rebuild into our own folder replaces exactly our previous files, no --overwrite needed
    assert main(["shards", str(cfg), "rows_per_file=1000"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "notes.txt", "rows-00000.array_record"]


def test_build_that_drops_every_chat_fails_naming_why_and_writes_nothing(data, tmp_path, capsys):
    cfg = shards_yaml(tmp_path, data, kind="chats", seq_len=8, overlong_chats="drop")
    assert main(["shards", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "all 40 sequences are longer than seq_len 8 and were dropped" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_dropped_chats_are_not_counted_as_documents_and_the_summary_says_so(data, tmp_path, capsys):
    chats = tmp_path / "mixed.jsonl"
    with open(chats, "w") as f:
        for i in range(8):
            answer = "cheese " * (3 if i < 5 else 200)
            f.write(json.dumps({"messages": [{"role": "user", "content": "Which?"},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    cfg = shards_yaml(tmp_path, data, kind="chats", inputs=[{"path": str(chats), "kind": "chats"}])
    assert main(["shards", str(cfg)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["overlong"]["dropped"] == 3 and manifest["counts"]["documents"] == 5
    assert "5 documents" in out and "3 over-long dropped" in out


def test_empty_input_file_beside_a_good_one_is_an_error_naming_it(data, tmp_path, capsys):
    tmp, model = data
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = shards_yaml(tmp_path, data, inputs=[{"path": str(tmp / "docs.jsonl"), "kind": "docs"},
                                              {"path": str(empty), "kind": "docs"}])
    assert main(["shards", str(cfg)]) == 1
    assert f"{empty}: input file is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_chat_shards_refuse_a_tokenizer_without_the_templates_special_tokens(data, tmp_path, capsys):
    import io

    import sentencepiece as spm

    tmp, _ = data
    plain = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(open(tmp / "docs.jsonl").read().splitlines()),
                                   model_writer=plain, vocab_size=300, minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "plain.model").write_bytes(plain.getvalue())
    cfg = shards_yaml(tmp_path, data, kind="chats", tokenizer=str(tmp_path / "plain.model"))
    assert main(["shards", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "lacks the qwen3 chat template's special token(s) <|im_start|> <|im_end|> <think> </think>" in err
    assert not (tmp_path / "out").exists()
