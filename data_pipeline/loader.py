"""The training input: Grain over packed ArrayRecord shards, batch k a pure function of (seed, k).

Rows of all sources form one infinite stream. A *mixture epoch* holds `num_rows` rows
(the sum of the sources' row counts); source s gets a share of it proportional to its
weight (largest-remainder apportionment), interleaved evenly and, with `shuffle`, in a
seeded order per mixture epoch. The k-th draw from a source walks through seeded
per-pass permutations of that source (Grain's `MapDataset.shuffle`: O(1) memory
index shuffles, re-seeded every pass), so a source that is up-weighted repeats
(re-shuffled) and one that is down-weighted is sub-sampled, and a mixture of any
length is well defined (Grain's own `mix` stops at the first exhausted input).

Global batch `step` is stream rows [step*B, (step+1)*B); each process reads only its
slice. Resume therefore needs no iterator state and survives a change of process
count; the Grain iterator view (`iterator`) adds background prefetch and a
get_state/set_state checkpoint for the same order.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np

from data_pipeline.packing import FIELDS, decode_row
from msm_jax.config import ConfigError
from msm_jax.errors import UserError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceConfig:
    path: str  # a shard directory written by `msm shards`
    weight: float = 1.0

    def validate(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"weight must be positive, got {self.weight}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    sources: tuple[SourceConfig, ...]
    shuffle: bool = True
    num_epochs: Optional[int] = None  # None: the stream never ends
    prefetch: int = 2  # batches read ahead by background threads in `iterator`
    worker_count: int = 0  # >0: Grain worker processes (pays off only for slow storage)

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one shard directory is needed")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError("num_epochs must be positive or null")
        if self.prefetch < 0 or self.worker_count < 0:
            raise ValueError("prefetch and worker_count must be >= 0")


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no manifest; is {shard_dir} a shard directory written by `msm shards`?") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt manifest: {e}") from None


def open_rows(shard_dir: str, manifest: dict):
    """Grain's source over the row files the manifest lists; a missing or damaged file is named."""
    import grain

    files = [Path(shard_dir) / name for name in manifest.get("files", [])]
    if not files:
        raise UserError(f"{shard_dir}: the manifest lists no row files; rebuild it with `msm shards`")
    for path in files:
        if not path.is_file():
            raise UserError(f"{path}: row file listed in the manifest is missing; rebuild with `msm shards --force`")
    try:
        return grain.sources.ArrayRecordDataSource([str(f) for f in files])
    except RuntimeError as e:  # array_record: truncated or corrupt file
        raise UserError(f"{shard_dir}: cannot read the row files ({' '.join(str(e).split())}); "
                        f"rebuild with `msm shards --force`") from None


def derived_seed(*parts: int) -> int:
    """A 32-bit seed for Grain's shuffles, independent for each tuple of parts."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def apportion(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integer shares proportional to `weights` (largest remainder),
    every share at least 1."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.maximum(np.floor(exact).astype(np.int64), 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    i = 0
    while counts.sum() < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while counts.sum() > total:  # only when the minimum of 1 pushed the sum over
        counts[int(np.argmax(counts))] -= 1
    return [int(c) for c in counts]


def interleave(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Evenly interleaved (source, draw) pairs: draw k of source s sits at (k+0.5)/count_s."""
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts])
    source = np.concatenate([np.full(c, s, dtype=np.int64) for s, c in enumerate(counts)])
    draw = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
    order = np.lexsort((source, keys))
    return source[order], draw[order]


class StepLoader:
    """Batches of packed rows by step number; see the module docstring for the order."""

    def __init__(self, cfg: LoaderConfig, *, global_batch: int, seq_len: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        import grain

        if global_batch % process_count:
            raise UserError(f"global batch {global_batch} is not divisible by the process count {process_count}")
        if not 0 <= process_index < process_count:
            raise UserError(f"process index {process_index} outside [0, {process_count})")
        self.cfg = cfg
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.seq_len = seq_len
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.manifests = [read_manifest(src.path) for src in cfg.sources]
        self._rows = []  # per source: Grain MapDataset of records; index d = d-th draw (wraps per epoch)
        for s, (src, manifest) in enumerate(zip(cfg.sources, self.manifests)):
            if manifest["seq_len"] != seq_len:
                raise UserError(f"{src.path}: shards have seq_len {manifest['seq_len']}, the run asks for {seq_len}")
            source = open_rows(src.path, manifest)
            if len(source) != manifest["num_rows"] or len(source) == 0:
                raise UserError(f"{src.path}: manifest says {manifest['num_rows']} rows, files hold {len(source)}")
            rows = grain.MapDataset.source(source)
            self._rows.append(rows.shuffle(seed=derived_seed(seed, 1, s)) if cfg.shuffle else rows)
        self.source_rows = [len(r) for r in self._rows]
        self.num_rows = sum(self.source_rows)
        self.rows_per_source = apportion(self.num_rows, [s.weight for s in cfg.sources])
        self._mix_source, self._mix_draw = interleave(self.rows_per_source)
        mixture = grain.MapDataset.range(self.num_rows)
        self._mixture = mixture.shuffle(seed=derived_seed(seed, 0)) if cfg.shuffle else mixture

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids from a tokenizer larger than the model's vocabulary would index past the
        embedding (and show up as a non-finite loss): refuse before the first step."""
        for src, manifest in zip(self.cfg.sources, self.manifests):
            tokens = manifest.get("tokenizer", {}).get("vocab_size", 0)
            if tokens > vocab_size:
                raise ConfigError(f"model.vocab_size: {vocab_size} is smaller than the vocabulary of the tokenizer "
                                  f"that built {src.path} ({tokens} tokens); use a model with at least {tokens}")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    @property
    def num_steps(self) -> Optional[int]:
        """Steps until the last full batch of `num_epochs`; None for an endless stream."""
        if self.cfg.num_epochs is None:
            return None
        return self.cfg.num_epochs * self.num_rows // self.global_batch

    def locate(self, row: int) -> tuple[int, int]:
        """(source, draw) of stream row `row`: the draw-th record of that source's
        (re-shuffled every pass) order."""
        epoch = row // self.num_rows
        j = self._mixture[row]  # Grain's shuffle re-seeds per epoch; range wraps to [0, num_rows)
        s = int(self._mix_source[j])
        return s, epoch * self.rows_per_source[s] + int(self._mix_draw[j])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step`: int32 arrays [local_batch, seq_len]."""
        if step < 0 or (self.num_steps is not None and step >= self.num_steps):
            raise IndexError(f"step {step} outside the data ({self.num_steps} steps of {self.cfg.num_epochs} epochs)")
        first = step * self.global_batch + self.process_index * self.local_batch
        rows = [self._read(*self.locate(r)) for r in range(first, first + self.local_batch)]
        return {name: np.stack([row[k] for row in rows]) for k, name in enumerate(FIELDS)}

    def _read(self, source: int, draw: int) -> np.ndarray:
        return decode_row(self._rows[source][draw], self.seq_len)

    def dataset(self, start_step: int = 0):
        """A Grain MapDataset whose element i is `batch(start_step + i)`."""
        import grain

        stop = self.num_steps if self.num_steps is not None else start_step + 2**40
        return grain.MapDataset.range(start_step, stop).map(self.batch)

    def iterator(self, start_step: int = 0):
        """A Grain iterator over batches from `start_step`, read ahead in the background;
        its get_state()/set_state() checkpoint the position."""
        import grain

        ds = self.dataset(start_step).to_iter_dataset(
            grain.ReadOptions(num_threads=self.cfg.prefetch, prefetch_buffer_size=max(self.cfg.prefetch, 1)))
        if self.cfg.worker_count:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # Grain workers read absl flags; we run outside absl.app.run
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.cfg.worker_count))
        return iter(ds)


def make_train_loader(cfg: LoaderConfig, *, global_batch: int, seq_len: int, seed: int,
                      process_index: int = 0, process_count: int = 1) -> StepLoader:
    return StepLoader(cfg, global_batch=global_batch, seq_len=seq_len, seed=seed,
                      process_index=process_index, process_count=process_count)


def to_global_batch(local: dict[str, np.ndarray], sharding) -> dict:
    """Assemble each process's slice into global jax Arrays with the batch's sharding."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
