"""The feature cache: keyed by fingerprint and key, values read shard by shard into the caller's sink, small shards
merged, concurrent merges survived, corrupt files named, disabled with None."""

from __future__ import annotations

import numpy as np
import pytest

from k3eval.errors import UserError
from k3eval.metrics import cache as cache_mod
from k3eval.metrics.cache import FeatureCache, fingerprint_key
from k3eval.metrics.extract import ArraySink


class Recording(ArraySink):
    """An ArraySink that records each delivery (one per shard read)."""

    def __init__(self, n):
        super().__init__(n)
        self.calls = []

    def add(self, idx, values):
        self.calls.append(len(idx))
        super().add(idx, values)


def _load(cache: FeatureCache, keys: list[str]):
    loc = cache.locate(keys)
    sink = Recording(len(keys))
    cache.read(loc, loc.found, sink)
    return loc.found, sink


def test_put_locate_read_across_instances_and_fingerprints(tmp_path):
    fp = {"extractor": "x", "protocol": "clean"}
    FeatureCache(fp, tmp_path).put(["a" * 64, "b" * 64], np.array([[1.0, 1, 1], [0, 0, 0]]))
    again = FeatureCache(dict(reversed(list(fp.items()))), tmp_path)  # key order does not matter
    found, sink = _load(again, ["c" * 64, "a" * 64, "a" * 64])
    assert found.tolist() == [False, True, True]
    got = sink.result(found)
    assert got.dtype == np.float32 and got.tolist() == [[1, 1, 1], [1, 1, 1]]
    other = FeatureCache({**fp, "protocol": "tf"}, tmp_path)
    assert not other.locate(["a" * 64]).found.any()
    assert fingerprint_key(fp) != fingerprint_key({**fp, "protocol": "tf"})
    assert (tmp_path / again.key / "fingerprint.json").exists()


def test_values_are_read_a_shard_at_a_time_in_item_order(tmp_path):
    c = FeatureCache({"e": 1}, tmp_path)
    keys = [f"{i:064d}" for i in range(10)]
    c.put(keys[:4], np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2)))
    c.put(keys[4:], np.arange(4, 10, dtype=np.float32)[:, None] * np.ones((1, 2)))
    wanted = keys[::-1]
    found, sink = _load(c, wanted)
    assert found.all() and sorted(sink.calls) == [4, 6]  # one delivery per shard, not per value
    np.testing.assert_array_equal(sink.result()[:, 0], np.arange(10)[::-1])


def test_ragged_values_round_trip(tmp_path):
    c = FeatureCache({"e": "ragged"}, tmp_path)
    c.put(["k1", "k2", "k3"], [np.ones((2, 6)), np.zeros((0, 6)), np.full((1, 6), 3.0)])
    c.put(["k4"], [np.full((2, 6), 4.0)])
    found, sink = _load(c, ["k3", "k4", "k2", "k1"])
    got = sink.result()
    assert found.all() and [v.shape for v in got] == [(1, 6), (2, 6), (0, 6), (2, 6)]
    assert got[0][0, 0] == 3.0 and got[1][1, 5] == 4.0


def test_small_shards_are_merged_past_the_limit_full_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "MAX_SHARDS", 3)
    monkeypatch.setattr(cache_mod, "SHARD_ROWS", 4)
    c = FeatureCache({"e": 1}, tmp_path)
    c.put([f"f{i}" for i in range(4)], np.zeros((4, 2)))  # a full shard: never merged
    for i in range(5):
        c.put([f"{i:064d}"], np.full((1, 2), i))
    shards = list((tmp_path / c.key).glob("*.npz"))
    assert len(shards) <= 4
    sizes = sorted(len(np.load(s)["keys"]) for s in shards)
    assert sizes.count(4) >= 1 and sum(sizes) == 9  # nothing lost, nothing duplicated
    found, sink = _load(FeatureCache({"e": 1}, tmp_path), [f"{i:064d}" for i in range(5)] + ["f3"])
    assert found.all() and sink.result()[4].tolist() == [4.0, 4.0]


def test_a_shard_merged_away_after_locate_is_found_in_the_merged_one(tmp_path, monkeypatch):
    """A concurrent writer merges shards between our lookup and our read: the values are read from the merged
    shard (written before its sources are removed)."""
    monkeypatch.setattr(cache_mod, "MAX_SHARDS", 2)
    c = FeatureCache({"e": 1}, tmp_path)
    keys = [f"{i:064d}" for i in range(3)]
    for i, k in enumerate(keys[:2]):
        c.put([k], np.full((1, 2), i))
    loc = c.locate(keys[:2])
    c.put([keys[2]], np.full((1, 2), 2))  # the third small shard: all three are merged into one
    assert len(list((tmp_path / c.key).glob("*.npz"))) == 1
    sink = ArraySink(2)
    c.read(loc, loc.found, sink)
    assert sink.result().tolist() == [[0, 0], [1, 1]]


def test_a_corrupt_shard_is_named(tmp_path):
    c = FeatureCache({"e": 1}, tmp_path)
    c.put(["k"], np.ones((1, 2)))
    shard = next((tmp_path / c.key).glob("*.npz"))
    shard.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=f"feature cache file {shard} is unreadable.*delete it"):
        c.locate(["k"])


def test_disabled_cache_writes_and_finds_nothing(tmp_path):
    c = FeatureCache({"e": 1}, None)
    c.put(["k"], np.ones((1, 2)))
    assert not c.locate(["k"]).found.any()
    assert list(tmp_path.iterdir()) == []
