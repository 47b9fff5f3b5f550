"""Packing token sequences into fixed-length rows with segment ids and positions.

Strategy: first-fit-decreasing within a buffer of consecutive sequences. Inside each
buffer, sequences are placed longest first (ties in input order) into the first open
row with room; rows are emitted in creation order when the buffer is done. Everything
is deterministic, so a rebuild is byte-identical.

Row layout (CONTRACTS.md): int32 `tokens`, `segment_ids` (1, 2, ... per sequence,
0 = padding), `positions` (restart at 0 per segment), `loss_mask` (1 where the token
is a training target; the first token of a segment never is).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Literal

import numpy as np

FIELDS = ("tokens", "segment_ids", "positions", "loss_mask")
OverlongPolicy = Literal["split", "truncate", "drop"]


@dataclasses.dataclass(frozen=True)
class Sequence:
    """One tokenized document or chat: ids and per-token target mask (same length)."""

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass
class PackStats:
    sequences_in: int = 0
    sequences_packed: int = 0  # segments written (a split document counts once per piece)
    split: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens_dropped: int = 0
    rows: int = 0
    tokens: int = 0  # non-pad tokens written
    loss_tokens: int = 0

    def efficiency(self, seq_len: int) -> float:
        return self.tokens / (self.rows * seq_len) if self.rows else 0.0


def fit_to_length(seq: Sequence, seq_len: int, policy: OverlongPolicy, stats: PackStats) -> list[Sequence]:
    """Apply the over-long policy: pieces of at most `seq_len` tokens (maybe none)."""
    stats.sequences_in += 1
    if len(seq) <= seq_len:
        return [seq]
    if policy == "drop":
        stats.dropped += 1
        stats.tokens_dropped += len(seq)
        return []
    if policy == "truncate":
        stats.truncated += 1
        stats.tokens_dropped += len(seq) - seq_len
        return [Sequence(seq.tokens[:seq_len], seq.loss_mask[:seq_len])]
    stats.split += 1
    pieces = []
    for start in range(0, len(seq), seq_len):
        mask = seq.loss_mask[start:start + seq_len].copy()
        mask[0] = 0  # a piece starts a new segment: its first token has no context
        pieces.append(Sequence(seq.tokens[start:start + seq_len], mask))
    return pieces


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices, in placement order) for items of the given lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    room = np.empty(len(lengths), dtype=np.int64)
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room[:len(bins)] >= lengths[i])
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = capacity
        bins[b].append(i)
        room[b] -= lengths[i]
    return bins


def build_row(seqs: list[Sequence], seq_len: int) -> np.ndarray:
    """An int32 [4, seq_len] row (FIELDS order) holding `seqs` as segments 1, 2, ..."""
    row = np.zeros((4, seq_len), dtype=np.int32)
    at = 0
    for seg_id, seq in enumerate(seqs, start=1):
        n = len(seq)
        row[0, at:at + n] = seq.tokens
        row[1, at:at + n] = seg_id
        row[2, at:at + n] = np.arange(n)
        row[3, at:at + n] = seq.loss_mask
        row[3, at] = 0
        at += n
    return row


def pack(seqs: Iterable[Sequence], seq_len: int, *, buffer_size: int = 1024,
         stats: PackStats | None = None) -> Iterator[np.ndarray]:
    """Rows [4, seq_len] from sequences that already fit (see `fit_to_length`)."""
    stats = stats if stats is not None else PackStats()
    buffer: list[Sequence] = []

    def flush() -> Iterator[np.ndarray]:
        for members in first_fit_decreasing([len(s) for s in buffer], seq_len):
            row = build_row([buffer[i] for i in members], seq_len)
            stats.rows += 1
            stats.sequences_packed += len(members)
            stats.tokens += int((row[1] > 0).sum())
            stats.loss_tokens += int(row[3].sum())
            yield row
        buffer.clear()

    for seq in seqs:
        if not 0 < len(seq) <= seq_len:
            raise ValueError(f"sequence of length {len(seq)} does not fit a row of {seq_len}")
        buffer.append(seq)
        if len(buffer) >= buffer_size:
            yield from flush()
    if buffer:
        yield from flush()


def unpack(row: np.ndarray) -> list[Sequence]:
    """The segments of a [4, seq_len] row, in row order (inverse of `build_row`)."""
    tokens, segment_ids, positions, loss_mask = row
    out = []
    for seg_id in range(1, int(segment_ids.max(initial=0)) + 1):
        where = np.flatnonzero(segment_ids == seg_id)
        if where.size == 0 or not np.array_equal(positions[where], np.arange(where.size)):
            raise ValueError(f"segment {seg_id} is not contiguous with positions 0..n-1")
        out.append(Sequence(tokens[where].copy(), loss_mask[where].copy()))
    return out


def encode_row(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype="<i4").tobytes()


def decode_row(record: bytes, seq_len: int) -> np.ndarray:
    return np.frombuffer(record, dtype="<i4").reshape(4, seq_len)
