"""The feature cache: keyed by fingerprint and sha256, one shard per write, shards merged, disabled with None."""

from __future__ import annotations

import numpy as np

from k3eval.metrics import cache as cache_mod
from k3eval.metrics.cache import FeatureCache, fingerprint_key


def test_put_get_across_instances_and_fingerprints(tmp_path):
    fp = {"extractor": "x", "protocol": "clean"}
    c = FeatureCache(fp, tmp_path)
    c.put({"a" * 64: np.ones(3), "b" * 64: np.zeros(3)})
    again = FeatureCache(dict(reversed(list(fp.items()))), tmp_path)  # key order does not matter
    got = again.get(["a" * 64, "c" * 64])
    assert list(got) == ["a" * 64] and got["a" * 64].dtype == np.float32
    other = FeatureCache({**fp, "protocol": "tf"}, tmp_path)
    assert other.get(["a" * 64]) == {}
    assert fingerprint_key(fp) != fingerprint_key({**fp, "protocol": "tf"})
    assert (tmp_path / c.key / "fingerprint.json").exists()


def test_shards_are_merged_past_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "MAX_SHARDS", 3)
    c = FeatureCache({"e": 1}, tmp_path)
    for i in range(5):
        c.put({f"{i:064d}": np.full(2, i)})
    shards = list((tmp_path / c.key).glob("*.npz"))
    assert len(shards) <= 3
    fresh = FeatureCache({"e": 1}, tmp_path)
    got = fresh.get([f"{i:064d}" for i in range(5)])
    assert len(got) == 5 and got[f"{4:064d}"].tolist() == [4.0, 4.0]


def test_disabled_cache_writes_nothing(tmp_path):
    c = FeatureCache({"e": 1}, None)
    c.put({"k": np.ones(2)})
    assert c.get(["k"])["k"].tolist() == [1.0, 1.0]  # kept in memory for this call only
    assert FeatureCache({"e": 1}, None).get(["k"]) == {}
    assert list(tmp_path.iterdir()) == []
