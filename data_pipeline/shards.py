"""`msm shards`: JSONL documents/chats -> tokenized, packed ArrayRecord rows + manifest.json.

The build is deterministic (input order, seeded budget order, deterministic packing,
no timestamps), so the same inputs and config give byte-identical files. It writes into
a temporary folder inside `out` and moves the files into place on success, so a failed
build never replaces good shards; a build whose input and config hashes match the
existing manifest is skipped. `out` is claimed (msm_jax/outputs.py): a folder holding
files msm did not write is refused unless `--overwrite`, and those files are never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from data_pipeline import packing
from data_pipeline.budgets import select_budget
from data_pipeline.chat_templates import (DOC_BOS, DOC_EOS, DEFAULT_TEMPLATE, ChatConfig, NoExactMask,
                                          tokenize_chat)
from data_pipeline.jsonl import BadLine, ReadStats, parse_chat, parse_document, read_jsonl
from data_pipeline.packing import PackStats, Sequence
from data_pipeline.tokenizer import Tokenizer, file_sha256, load_tokenizer
from msm_jax.config import config_hash, to_dict
from msm_jax.errors import UserError
from msm_jax.models.config import ModelConfig
from msm_jax.outputs import MARKER, atomic_write_text, claim_output_dir, read_marker

FORMAT = "msm-shards/1"
OUTPUT_KIND = "shards"  # the owner recorded in the output folder's marker (msm_jax/outputs.py)
# Special tokens each chat template writes; a tokenizer without them would spell them out as text.
CHAT_SPECIAL_TOKENS = {
    "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "llama3.1": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "qwen2.5": ("<|im_start|>", "<|im_end|>"),
    "qwen3": ("<|im_start|>", "<|im_end|>", "<think>", "</think>"),
}
ARRAY_RECORD_OPTIONS = "group_size:1"  # random access per row for shuffled reads


@dataclasses.dataclass(frozen=True, kw_only=True)
class InputConfig:
    path: str
    kind: Literal["docs", "chats"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardsConfig:
    inputs: tuple[InputConfig, ...]
    out: str
    tokenizer: str  # a .model, a tokenizer.json, or a folder with one
    chat: ChatConfig = ChatConfig()  # the template also decides the document BOS/EOS tokens
    model: Optional[ModelConfig] = None  # picks the template by family; token ids checked against its vocab
    seq_len: int = 2048
    overlong_docs: packing.OverlongPolicy = "split"
    overlong_chats: packing.OverlongPolicy = "drop"
    pack_buffer: int = 1024  # sequences per first-fit-decreasing buffer
    rows_per_file: int = 16384
    budget_tokens: Optional[int] = None  # exact nested budget over the inputs' sequences
    budget_seed: int = 0
    skip_bad: bool = False

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: at least one JSONL file is needed")
        if self.seq_len < 2 or self.pack_buffer < 1 or self.rows_per_file < 1:
            raise ValueError("seq_len must be >= 2, pack_buffer and rows_per_file >= 1")
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive or null")
        if self.overlong_chats == "split":
            raise ValueError("overlong_chats: a chat cut into pieces loses its prompt; use drop or truncate")
        if self.chat.template is None and self.model is None:
            raise ValueError("set chat.template (llama3, llama3.1, qwen2.5, qwen3) or model (a preset name)")

    @property
    def resolved_chat(self) -> ChatConfig:
        if self.chat.template is not None:
            return self.chat
        return dataclasses.replace(self.chat, template=DEFAULT_TEMPLATE[self.model.family])


def identity_config(cfg: ShardsConfig) -> dict:
    """The config as it decides the output: everything but where it goes."""
    tree = to_dict(cfg)
    del tree["out"]
    return tree


def tokenize_document(text: str, tokenizer: Tokenizer, template: str) -> Sequence:
    """[BOS] text EOS; every token but the first is a target."""
    bos = DOC_BOS[template]
    ids = ([tokenizer.special_id(bos)] if bos else []) + tokenizer.encode(text)
    ids.append(tokenizer.special_id(DOC_EOS[template]))
    mask = np.ones(len(ids), dtype=np.int32)
    mask[0] = 0
    return Sequence(np.asarray(ids, dtype=np.int32), mask)


def record_tokenizer(kind: str, cfg: ShardsConfig, tokenizer: Tokenizer):
    """record -> Sequence for one input kind; records that cannot be used raise BadLine."""
    def tokenize_doc_record(record: dict) -> Sequence:
        return tokenize_document(parse_document(record), tokenizer, cfg.resolved_chat.template)

    def tokenize_chat_record(record: dict) -> Sequence:
        try:
            return tokenize_chat(parse_chat(record), cfg.resolved_chat, tokenizer)
        except NoExactMask as e:
            raise BadLine(str(e), "no exact loss mask") from None

    return tokenize_doc_record if kind == "docs" else tokenize_chat_record


def tokenize_inputs(cfg: ShardsConfig, tokenizer: Tokenizer) -> tuple[list[Sequence], list[str], list[dict]]:
    """All good records as sequences, in input order, with their kinds and per-input stats."""
    from tqdm import tqdm

    seqs, kinds, reports = [], [], []
    for inp in cfg.inputs:
        path = Path(inp.path)
        stats = ReadStats()
        lines = read_jsonl(path, record_tokenizer(inp.kind, cfg, tokenizer), skip_bad=cfg.skip_bad, stats=stats)
        for _, seq in tqdm(lines, desc=f"tokenize {path.name}", unit=" lines", disable=None):
            seqs.append(seq)
            kinds.append(inp.kind)
        if not stats.lines:
            raise UserError(f"{path}: input file is empty (no JSONL lines)")
        if not stats.records:
            raise UserError(f"{path}: no usable records: all {stats.lines} lines skipped "
                            f"({', '.join(f'{n} {r}' for r, n in sorted(stats.skipped.items()))})")
        reports.append({"path": str(path), "kind": inp.kind, "sha256": file_sha256(path), **stats.to_dict()})
    return seqs, kinds, reports


def fit_all(seqs: list[Sequence], kinds: list[str], cfg: ShardsConfig, stats: PackStats) -> list[list[Sequence]]:
    policy = {"docs": cfg.overlong_docs, "chats": cfg.overlong_chats}
    return [packing.fit_to_length(s, cfg.seq_len, policy[k], stats) for s, k in zip(seqs, kinds)]


def write_rows(rows, out_dir: Path, rows_per_file: int) -> list[str]:
    from array_record.python.array_record_module import ArrayRecordWriter

    files: list[str] = []
    writer = None
    for i, row in enumerate(rows):
        if i % rows_per_file == 0:
            if writer is not None:
                writer.close()
            files.append(f"rows-{len(files):05d}.array_record")
            writer = ArrayRecordWriter(str(out_dir / files[-1]), ARRAY_RECORD_OPTIONS)
        writer.write(packing.encode_row(row))
    if writer is not None:
        writer.close()
    return files


def up_to_date(out: Path, inputs_sha: list[str], cfg_hash: str) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return manifest.get("config_hash") == cfg_hash and [i["sha256"] for i in manifest.get("inputs", [])] == inputs_sha


def check_chat_tokens(cfg: ShardsConfig, tokenizer: Tokenizer) -> None:
    """Chat shards need the template's special tokens as single tokens of the tokenizer."""
    if not any(inp.kind == "chats" for inp in cfg.inputs):
        return
    template = cfg.resolved_chat.template
    missing = tokenizer.missing_special_tokens(CHAT_SPECIAL_TOKENS[template])
    if missing:
        raise UserError(f"{cfg.tokenizer}: tokenizer lacks the {template} chat template's special token(s) "
                        f"{' '.join(missing)}; use the model's own tokenizer or one from `msm tokenizer train`")


def no_rows_reason(cfg: ShardsConfig, stats: PackStats) -> str:
    if stats.dropped:
        return (f"all {stats.dropped} sequences are longer than seq_len {cfg.seq_len} and were dropped "
                f"(overlong_chats/overlong_docs: drop); raise seq_len or use truncate")
    return "no sequence was selected"


def adopt_unmarked_build(out: Path) -> None:
    """Shards written before output folders carried a marker: the files their manifest
    lists are ours, so record them (a rebuild then replaces exactly those)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return
    if read_marker(out) is None and isinstance(manifest, dict) and manifest.get("format") == FORMAT:
        files = ["manifest.json", *[f for f in manifest.get("files", []) if (out / f).is_file()]]
        atomic_write_text(out / MARKER, json.dumps({"kind": OUTPUT_KIND, "files": files}, indent=1))


def build_shards(cfg: ShardsConfig, *, force: bool = False, overwrite: bool = False) -> dict:
    """Build (or skip, when up to date) the shard directory `cfg.out`; returns the manifest.

    The rows are written into a temporary folder inside `out` and moved into place only
    when the build has succeeded, manifest last: a failed build leaves the previous shards,
    and a reader never trusts a half-replaced set. Files msm did not write are never touched."""
    out = Path(cfg.out)
    for inp in cfg.inputs:
        if not Path(inp.path).is_file():
            raise UserError(f"{inp.path}: input file not found")
    cfg_tree = identity_config(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer)
    if cfg.model is not None and tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(f"{cfg.tokenizer}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                        f"vocab_size {cfg.model.vocab_size}")
    check_chat_tokens(cfg, tokenizer)
    cfg_hash = config_hash({"config": cfg_tree, "tokenizer": tokenizer.identity["sha256"]})
    if not force and up_to_date(out, [file_sha256(Path(i.path)) for i in cfg.inputs], cfg_hash):
        return json.loads((out / "manifest.json").read_text())

    created = not out.exists()
    adopt_unmarked_build(out)
    claim = claim_output_dir(out, OUTPUT_KIND, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        manifest = write_build(cfg, tokenizer, cfg_tree, cfg_hash, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            (out / MARKER).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    (out / "manifest.json").unlink(missing_ok=True)  # readers stop trusting the old set first
    for name in manifest["files"]:
        os.replace(tmp / name, out / name)
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.rmdir()
    claim.wrote("manifest.json", *manifest["files"])
    claim.finish()
    return manifest


def write_build(cfg: ShardsConfig, tokenizer: Tokenizer, cfg_tree: dict, cfg_hash: str, tmp: Path) -> dict:
    """Tokenize, fit, budget and pack the inputs into row files in `tmp`; returns the manifest."""
    seqs, kinds, input_reports = tokenize_inputs(cfg, tokenizer)
    stats = PackStats()
    fitted = fit_all(seqs, kinds, cfg, stats)
    order = np.arange(len(fitted))
    budget = None
    if cfg.budget_tokens is not None:
        selection = select_budget([sum(len(p) for p in pieces) for pieces in fitted], cfg.budget_tokens,
                                  cfg.budget_seed)
        order, budget = selection.indices, selection.to_dict()
    kept = [int(i) for i in order if fitted[i]]  # dropped over-long sequences are not documents of the set
    pieces = (piece for i in kept for piece in fitted[i])
    files = write_rows(packing.pack(pieces, cfg.seq_len, buffer_size=cfg.pack_buffer, stats=stats), tmp,
                       cfg.rows_per_file)
    if not stats.rows:
        raise UserError(f"{cfg.out}: nothing to write: {no_rows_reason(cfg, stats)}")
    return {
        "format": FORMAT,
        "row_format": {"fields": list(packing.FIELDS), "dtype": "int32 little-endian", "shape": [4, cfg.seq_len]},
        "seq_len": cfg.seq_len,
        "files": files,
        "num_rows": stats.rows,
        "kinds": sorted(set(kinds[i] for i in kept)),
        "tokenizer": tokenizer.identity,
        "chat": to_dict(cfg.resolved_chat),
        "counts": {
            "documents": len(kept),
            "sequences": stats.sequences_packed,
            "rows": stats.rows,
            "tokens": stats.tokens,
            "loss_tokens": stats.loss_tokens,
        },
        "overlong": {"split": stats.split, "truncated": stats.truncated, "dropped": stats.dropped,
                     "tokens_dropped": stats.tokens_dropped},
        "packing_efficiency": round(stats.efficiency(cfg.seq_len), 6),
        "budget": budget,
        "inputs": input_reports,
        "config": cfg_tree,
        "config_hash": cfg_hash,  # config and tokenizer file; input hashes are under "inputs"
    }


def read_rows(shard_dir: str | Path) -> list[np.ndarray]:
    """Every row of a shard directory, in file order (for tests and inspection)."""
    from array_record.python.array_record_module import ArrayRecordReader

    shard_dir = Path(shard_dir)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    rows = []
    for name in manifest["files"]:
        reader = ArrayRecordReader(str(shard_dir / name))
        rows += [packing.decode_row(r, manifest["seq_len"]) for r in reader.read_all()]
        reader.close()
    return rows
