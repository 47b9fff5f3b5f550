"""The train loader: batch k is a pure function of (seed, k, data); epochs, weighted mixtures,
per-process slices and a checkpointable Grain iterator."""

import collections
import json

import numpy as np
import pytest

from data_pipeline.loader import LoaderConfig, SourceConfig, apportion, make_train_loader
from data_pipeline.packing import FIELDS
from data_pipeline.shards import write_rows
from msm_jax.config import load_config
from msm_jax.errors import UserError

SEQ = 16


def make_shards(directory, source_id, num_rows):
    """Rows whose first token names (source, row), so tests can see which row was read."""
    directory.mkdir()
    rows = []
    for r in range(num_rows):
        row = np.zeros((4, SEQ), np.int32)
        row[0] = source_id * 1000 + r
        row[1] = 1
        row[2] = np.arange(SEQ)
        row[3, 1:] = 1
        rows.append(row)
    files = write_rows(rows, directory, rows_per_file=7)
    (directory / "manifest.json").write_text(json.dumps({"seq_len": SEQ, "files": files, "num_rows": num_rows}))
    return str(directory)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    return {"a": make_shards(tmp / "a", 1, 48), "b": make_shards(tmp / "b", 2, 12)}


def ids(batch):
    return batch["tokens"][:, 0].tolist()


def loader(sources, **kw):
    cfg_kw = {k: kw.pop(k) for k in ("shuffle", "num_epochs", "prefetch") if k in kw}
    cfg = LoaderConfig(sources=tuple(SourceConfig(path=p, weight=w) for p, w in sources), **cfg_kw)
    kw.setdefault("global_batch", 8)
    kw.setdefault("seed", 0)
    return make_train_loader(cfg, seq_len=SEQ, **kw)


def test_batches_are_a_pure_function_of_seed_and_step(shards):
    one, two = loader([(shards["a"], 1.0)]), loader([(shards["a"], 1.0)])
    for step in [5, 0, 17, 5]:
        a, b = one.batch(step), two.batch(step)
        assert all(np.array_equal(a[k], b[k]) for k in FIELDS)
        assert all(a[k].dtype == np.int32 and a[k].shape == (8, SEQ) for k in FIELDS)
    assert ids(loader([(shards["a"], 1.0)], seed=1).batch(0)) != ids(one.batch(0))


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_epoch_reads_every_row_exactly_once(shards, shuffle):
    ld = loader([(shards["a"], 1.0)], shuffle=shuffle, num_epochs=2)
    assert ld.num_rows == 48 and ld.steps_per_epoch == 6 and ld.num_steps == 12
    first = [i for s in range(6) for i in ids(ld.batch(s))]
    second = [i for s in range(6, 12) for i in ids(ld.batch(s))]
    assert sorted(first) == sorted(second) == [1000 + r for r in range(48)]
    assert (first == sorted(first)) != shuffle and (first != second) == shuffle
    with pytest.raises(IndexError):
        ld.batch(12)


def test_process_slices_concatenate_to_the_global_batch(shards):
    whole = loader([(shards["a"], 1.0), (shards["b"], 1.0)])
    parts = [loader([(shards["a"], 1.0), (shards["b"], 1.0)], process_index=i, process_count=4) for i in range(4)]
    for step in [0, 3, 11]:
        assert ids(whole.batch(step)) == [i for p in parts for i in ids(p.batch(step))]
    assert parts[0].batch(0)["tokens"].shape == (2, SEQ)


def test_mixture_follows_weights_and_repeats_the_upweighted_source(shards):
    ld = loader([(shards["a"], 1.0), (shards["b"], 3.0)], global_batch=10)
    assert ld.num_rows == 60 and ld.rows_per_source == [15, 45]
    rows = [i for s in range(6) for i in ids(ld.batch(s))]  # one mixture epoch
    by_source = collections.Counter(i // 1000 for i in rows)
    assert by_source == {1: 15, 2: 45}
    b_rows = collections.Counter(i for i in rows if i // 1000 == 2)
    assert set(b_rows) == {2000 + r for r in range(12)} and max(b_rows.values()) - min(b_rows.values()) <= 1
    assert len({i for i in rows if i // 1000 == 1}) == 15  # down-weighted: a subsample without repeats


def test_mixture_is_interleaved_evenly_without_shuffle(shards):
    ld = loader([(shards["a"], 1.0), (shards["b"], 1.0)], shuffle=False, global_batch=6)
    sources = [i // 1000 for i in ids(ld.batch(0))]
    assert sources == [1, 2, 1, 2, 1, 2]


def test_grain_iterator_state_restores_the_exact_position(shards):
    ld = loader([(shards["a"], 2.0), (shards["b"], 1.0)], prefetch=2)
    it = ld.iterator(start_step=3)
    first = next(it)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = ld.iterator(start_step=3)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in FIELDS)
    assert ids(first) == ids(ld.batch(3)) and ids(expected[0]) == ids(ld.batch(5))


def test_bad_sources_and_shapes_are_user_errors(shards, tmp_path):
    with pytest.raises(UserError, match="seq_len 16, the run asks for 32"):
        make_train_loader(LoaderConfig(sources=(SourceConfig(path=shards["a"]),)), global_batch=8, seq_len=32, seed=0)
    with pytest.raises(UserError, match="no manifest"):
        loader([(str(tmp_path), 1.0)])
    with pytest.raises(UserError, match="not divisible by the process count"):
        loader([(shards["a"], 1.0)], process_count=3)


def test_loader_config_loads_from_yaml_with_validation(tmp_path, shards):
    path = tmp_path / "data.yaml"
    path.write_text(f"sources:\n  - {{path: {shards['a']}, weight: 2}}\n  - {{path: {shards['b']}}}\nnum_epochs: 1\n")
    cfg = load_config(LoaderConfig, path)
    assert cfg.sources[0].weight == 2.0 and cfg.sources[1].weight == 1.0 and cfg.shuffle
    path.write_text(f"sources:\n  - {{path: {shards['a']}, weight: 0}}\n")
    with pytest.raises(Exception, match="weight must be positive"):
        load_config(LoaderConfig, path)


def test_apportion_sums_exactly_and_gives_every_source_a_share():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(apportion(1000, [0.3, 0.3, 0.4])) == 1000
    assert apportion(5, [1000, 1]) == [4, 1]


def test_process_slice_becomes_a_global_array_with_the_batch_sharding(shards):
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from data_pipeline.loader import to_global_batch

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    local = loader([(shards["a"], 1.0)]).batch(2)
    arrays = to_global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
    assert arrays["tokens"].shape == (8, SEQ) and np.array_equal(np.asarray(arrays["loss_mask"]), local["loss_mask"])
