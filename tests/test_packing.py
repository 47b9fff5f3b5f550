"""Packing: no token lost, duplicated or reordered; segments, positions and masks as in CONTRACTS.md."""

import numpy as np
import pytest

from data_pipeline.packing import (PackStats, Sequence, build_row, decode_row, encode_row, first_fit_decreasing,
                                   fit_to_length, pack, unpack)


def make_docs(n, max_len, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        length = int(rng.integers(2, max_len))
        tokens = rng.integers(1, 1000, size=length).astype(np.int32)
        mask = np.ones(length, dtype=np.int32)
        mask[0] = 0
        docs.append(Sequence(tokens, mask))
    return docs


def as_key(seq):
    return (tuple(seq.tokens.tolist()), tuple(seq.loss_mask.tolist()))


def test_unpacking_gives_back_every_sequence_exactly_once():
    seq_len = 64
    stats = PackStats()
    pieces = [p for d in make_docs(300, 150) for p in fit_to_length(d, seq_len, "split", stats)]
    rows = list(pack(pieces, seq_len, buffer_size=50, stats=stats))
    unpacked = [s for row in rows for s in unpack(row)]
    assert sorted(map(as_key, unpacked)) == sorted(map(as_key, pieces))
    assert stats.tokens == sum(len(p) for p in pieces) == sum(int((r[1] > 0).sum()) for r in rows)
    assert stats.rows == len(rows) and stats.sequences_packed == len(pieces)


def test_split_pieces_concatenate_to_the_document_and_start_untrained():
    doc = Sequence(np.arange(1, 101, dtype=np.int32), np.r_[0, np.ones(99, dtype=np.int32)])
    stats = PackStats()
    pieces = fit_to_length(doc, 32, "split", stats)
    assert [len(p) for p in pieces] == [32, 32, 32, 4] and stats.split == 1
    assert np.array_equal(np.concatenate([p.tokens for p in pieces]), doc.tokens)
    assert [int(p.loss_mask[0]) for p in pieces] == [0, 0, 0, 0]
    assert all(p.loss_mask[1:].all() for p in pieces)


def test_overlong_chats_are_dropped_or_truncated_and_counted():
    chat = Sequence(np.arange(1, 51, dtype=np.int32), np.r_[np.zeros(10), np.ones(40)].astype(np.int32))
    stats = PackStats()
    assert fit_to_length(chat, 20, "drop", stats) == []
    truncated = fit_to_length(chat, 20, "truncate", stats)
    assert len(truncated) == 1 and np.array_equal(truncated[0].tokens, chat.tokens[:20])
    assert (stats.dropped, stats.truncated, stats.tokens_dropped, stats.sequences_in) == (1, 1, 80, 2)


def test_row_has_segment_ids_positions_and_untrained_segment_starts():
    a = Sequence(np.array([5, 6, 7], np.int32), np.array([0, 1, 1], np.int32))
    b = Sequence(np.array([8, 9], np.int32), np.array([1, 1], np.int32))
    row = build_row([a, b], 8)
    assert row.dtype == np.int32 and row.shape == (4, 8)
    assert row[0].tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
    assert row[1].tolist() == [1, 1, 1, 2, 2, 0, 0, 0]
    assert row[2].tolist() == [0, 1, 2, 0, 1, 0, 0, 0]
    assert row[3].tolist() == [0, 1, 1, 0, 1, 0, 0, 0]
    assert np.array_equal(decode_row(encode_row(row), 8), row)


def test_first_fit_decreasing_is_deterministic_and_keeps_padding_low():
    lengths = [40, 30, 30, 20, 20, 10, 10, 10, 20, 10]
    bins = first_fit_decreasing(lengths, 50)
    assert bins == first_fit_decreasing(lengths, 50)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 50 for b in bins)
    assert len(bins) == 4  # 200 tokens in 4 rows of 50: no padding at all


def test_packing_efficiency_is_high_for_realistic_lengths():
    stats = PackStats()
    list(pack([p for d in make_docs(2000, 300, seed=3) for p in fit_to_length(d, 256, "split", stats)],
              256, buffer_size=512, stats=stats))
    assert stats.efficiency(256) > 0.95


def test_sequence_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        list(pack([Sequence(np.ones(9, np.int32), np.ones(9, np.int32))], 8))
