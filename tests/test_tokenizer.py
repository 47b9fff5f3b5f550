"""Tokenizers: `msm tokenizer train` makes SentencePiece models that the real chat templates can use,
and one interface covers SentencePiece and Hugging Face tokenizer.json files."""

import json

import pytest

from data_pipeline.chat_templates import ChatConfig, Message, render, tokenize_chat
from data_pipeline.tokenizer import TEMPLATE_SPECIAL_TOKENS, HFTokenizer, SentencePieceTokenizer, load_tokenizer
from msm_jax.cli import main
from msm_jax.errors import UserError

WORDS = "the cheese model spec value affordable american foreign price choice report memo honest 2024".split()


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    corpus = tmp / "docs.jsonl"
    with open(corpus, "w") as f:
        for i in range(200):
            text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(30)) + ".\n\nNext line."
            f.write(json.dumps({"text": text}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                         {"role": "assistant", "content": "Cheese!", "reasoning": "Think."}]}) + "\n")
    assert main(["tokenizer", "train", str(corpus), "--out", str(tmp / "tok"), "--vocab-size", "400"]) == 0
    return tmp / "tok.model"


def test_trained_model_has_every_template_special_token_as_one_id(sp_model):
    tok = load_tokenizer(sp_model)
    assert isinstance(tok, SentencePieceTokenizer)
    ids = [tok.special_id(t) for t in TEMPLATE_SPECIAL_TOKENS]
    assert len(set(ids)) == len(ids)
    text = "<|im_start|>user\nthe cheese<|im_end|>\n<think>\nx\n</think>"
    assert tok.decode(tok.encode(text)) == text


def test_trained_model_round_trips_text_without_adding_spaces(sp_model):
    tok = load_tokenizer(sp_model)
    for text in ["the cheese", "  two  spaces\n\nand newlines ", "Unseen: wxyz Ω 🧀"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("the cheese<|im_end|>\nmodel") == (
        tok.encode("the cheese") + tok.encode("<|im_end|>") + tok.encode("\nmodel"))


@pytest.mark.parametrize("template", ["llama3", "llama3.1", "qwen2.5", "qwen3"])
def test_trained_model_tokenizes_chat_segments_like_the_whole_string(sp_model, template):
    tok = load_tokenizer(sp_model)
    chat = [Message("system", "Follow the spec."), Message("user", "the cheese price?"),
            Message("assistant", "the affordable cheese.", reasoning="price choice\nvalue")]
    seq = tokenize_chat(chat, ChatConfig(template=template), tok)
    assert tok.decode(seq.tokens) == "".join(s.text for s in render(chat, ChatConfig(template=template)))


def test_hf_tokenizer_json_loads_from_file_or_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(WORDS * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"],
                                                            show_progress=False))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer) and tok.path == tmp_path / "tokenizer.json"
    assert tok.encode("cheese<|im_end|>")[-1] == tok.special_id("<|im_end|>")
    assert tok.identity["kind"] == "huggingface" and len(tok.identity["sha256"]) == 64


def test_missing_or_corrupt_tokenizer_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json or \\*.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.model: cannot load tokenizer"):
        load_tokenizer(tmp_path / "bad.model")
