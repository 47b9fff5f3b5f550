"""One tokenizer interface over SentencePiece `.model` files and Hugging Face
`tokenizer.json` files, plus training a SentencePiece model for the demo's tiny models.

`encode` never adds BOS/EOS by itself: the chat templates and the document encoder
place special tokens explicitly, so the ids are exactly what the template renders.
Special-token strings written in the text (`<|im_start|>`) become their single ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Iterable, Optional

from msm_jax.config import ConfigError
from msm_jax.errors import UserError
from msm_jax.outputs import atomic_write_bytes

# Special tokens the supported chat templates and document encoders write as text.
# Training adds them as user-defined symbols so tiny demo models use real templates.
TEMPLATE_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """Common interface; `identity` goes into shard manifests."""

    kind: str
    path: Path
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> Optional[int]:
        raise NotImplementedError

    def special_id(self, token: str) -> int:
        """The id of a special token that must exist as one token; fails loudly otherwise."""
        tid = self.token_to_id(token)
        if tid is None or self.encode(token) != [tid]:
            raise UserError(f"{self.path}: tokenizer has no single special token {token!r}; the chat template "
                            f"needs it (train with `msm tokenizer train`, which adds the template tokens)")
        return tid

    def missing_special_tokens(self, tokens: Iterable[str]) -> list[str]:
        """Those of `tokens` this tokenizer does not encode as one token of their own."""
        return [t for t in tokens if self.token_to_id(t) is None or self.encode(t) != [self.token_to_id(t)]]

    @property
    def identity(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": file_sha256(self.path),
                "vocab_size": self.vocab_size}


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: Path):
        import sentencepiece as spm

        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_to_id(self, token: str) -> Optional[int]:
        tid = self._sp.piece_to_id(token)
        return None if tid == self._sp.unk_id() and token != self._sp.id_to_piece(tid) else tid


class HFTokenizer(Tokenizer):
    kind = "huggingface"

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as RustTokenizer

        self.path = path
        self._tok = RustTokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `.model` file (SentencePiece), a `tokenizer.json`, or a folder holding one."""
    p = Path(path)
    if p.is_dir():
        candidates = [p / "tokenizer.json", p / "tokenizer.model", *sorted(p.glob("*.model"))]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise UserError(f"{p}: no tokenizer.json or *.model file in this folder")
        p = found[0]
    if not p.is_file():
        raise UserError(f"{p}: tokenizer file not found")
    try:
        if p.suffix == ".json":
            return HFTokenizer(p)
        return SentencePieceTokenizer(p)
    except Exception as e:  # both libraries raise bare Exceptions on bad files
        raise UserError(f"{p}: cannot load tokenizer: {e}") from None


def iter_corpus_text(paths: Iterable[Path], field: str = "text") -> Iterable[str]:
    """Lines of text files, or the `field` (or chat message contents) of JSONL files."""
    for path in paths:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#x} at column "
                                    f"{e.start + 1})") from None
                if path.suffix != ".jsonl":
                    yield line.rstrip("\n")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object")
                if isinstance(record.get(field), str):
                    yield record[field]
                messages = record.get("messages")
                for message in messages if isinstance(messages, list) else []:
                    for key in ("content", "reasoning"):
                        if isinstance(message, dict) and isinstance(message.get(key), str):
                            yield message[key]


def train_sentencepiece(inputs: list[Path], out_prefix: Path, *, vocab_size: int, model_type: str = "bpe",
                        extra_symbols: Iterable[str] = (), seed_sentencepiece_size: int = 100000) -> Path:
    """Train a SentencePiece model; returns the `.model` path.

    Normalisation is off and there is no dummy-prefix space, so encoding a string in
    pieces split at special tokens equals encoding it whole (chat templates rely on it);
    newline is its own symbol for the same reason."""
    import sentencepiece as spm

    if vocab_size < 1:
        raise ConfigError(f"--vocab-size must be a positive number of pieces, got {vocab_size}")
    texts = [t for t in iter_corpus_text(inputs) if t]
    if not texts:
        raise UserError(f"no text found in {', '.join(map(str, inputs))}")
    symbols = list(dict.fromkeys([*TEMPLATE_SPECIAL_TOKENS, *extra_symbols, "\n"]))
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            user_defined_symbols=symbols, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, split_digits=True, byte_fallback=True, character_coverage=1.0,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3, num_threads=1, minloglevel=2,
            seed_sentencepiece_size=seed_sentencepiece_size, hard_vocab_limit=False,
            allow_whitespace_only_pieces=True)
    except RuntimeError as e:  # SentencePiece's checks, e.g. a vocabulary too small for the characters
        need = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", str(e))
        if need:
            raise UserError(f"--vocab-size {vocab_size} is smaller than the {need.group(1)} pieces the corpus's "
                            f"characters and the special tokens need; use at least {need.group(1)}") from None
        raise UserError(f"SentencePiece training failed: {' '.join(str(e).split())}") from None
    path = out_prefix.with_suffix(".model")
    atomic_write_bytes(path, model.getvalue())
    return path
