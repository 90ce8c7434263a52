"""The report scan's vectorised pieces give exactly what the plain definitions give: bin counts
equal np.histogram, the smallest keys equal a stable argsort, uid hashes equal their definition per uid (and do not depend on the batch),
failed_stages marks and unknown stage counts equal a loop over the list entries, and
read_ahead returns every read in order and raises at the file that failed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from beam_filter.readahead import read_ahead
from beam_filter.report.data import READ_STAGE, _bin_counts, _OverlapAcc, _smallest, uid_hashes


def test_bin_counts_equal_numpy_histogram():
    rng = np.random.default_rng(0)
    for trial in range(200):
        lo = rng.normal()
        edges = np.linspace(lo, lo + rng.random() * 3 + 0.01, int(rng.integers(2, 42)))
        if trial % 3 == 0:
            edges = np.arange(-3.5, 7.5, 1.0)                    # integer columns: unit bins
        values = np.concatenate([rng.normal(size=int(rng.integers(0, 2000))) * 2, edges,
                                 edges[[0, -1]], edges[-1:] + 1e-9, edges[:1] - 1e-9])
        if trial % 3 == 0:
            values = np.round(values)
        kept = rng.random(len(values)) < 0.5
        got_kept, got_dropped = _bin_counts(values, kept, edges)
        assert np.array_equal(got_kept, np.histogram(values[kept], bins=edges)[0])
        assert np.array_equal(got_dropped, np.histogram(values[~kept], bins=edges)[0])


def test_smallest_equals_stable_argsort_with_ties():
    rng = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng.integers(0, 3000))
        keys = (rng.integers(0, 40, size=n) if trial % 2 else rng.integers(0, 2 ** 63, size=n)).astype(">u8")
        idx = np.arange(n) * 3 + 1
        for m in (1, 8, 50):
            assert np.array_equal(_smallest(idx, keys, m), idx[np.argsort(keys, kind="stable")[:m]])


def _hash_one(text: str) -> int:
    """uid_hashes' definition for one uid, byte by byte in plain Python."""
    mask = (1 << 64) - 1

    def mix(x):
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    raw = text.encode("utf-8")
    h = mix(len(raw) ^ 0x9E3779B97F4A7C15)
    for i in range(0, len(raw), 8):
        h = mix(h ^ int.from_bytes(raw[i:i + 8].ljust(8, b"\0"), "little"))
    return h


def test_uid_hashes_equal_the_definition_for_each_uid_in_any_batch():
    uids = ["%032x" % i for i in range(300)] + ["", "é", "ab", "x" * 8, "y" * 9, "a\0", "a", "long-" * 40]
    want = [_hash_one(str(u)) for u in uids + [None]]
    for col in (pa.chunked_array([uids[:100], uids[100:] + [None]]), pa.array(uids + [None], pa.large_string()),
                pa.array(uids + [None]).slice(0), pa.chunked_array([pa.array(["pad"] + uids + [None]).slice(1)])):
        got = uid_hashes(col)
        assert got.dtype == np.uint64 and got.tolist() == want
    # a uid's hash is its own: the same in a batch of equal-length uids as among longer ones
    alone = uid_hashes(pa.array(["%032x" % i for i in range(5)]))
    assert alone.tolist() == want[:5]
    assert len(set(want)) == len(want)          # "a" and "a\0" differ: the length is hashed
    ints = uid_hashes(pa.chunked_array([pa.array([5, None], pa.int64())]))
    assert ints.tolist() == [_hash_one("5"), _hash_one("None")]
    assert uid_hashes(pa.array([], pa.string())).size == 0


def test_failed_stage_lists_mark_as_the_entry_loop_does():
    stages = ["basic", "clip", "dedup"]
    lists = pa.array([["basic", "clip"], [], None, ["dedup", READ_STAGE, "other"], ["zzz", None, "clip"],
                      ["other"]], pa.list_(pa.string()))
    acc = _OverlapAcc(stages, {}, set())
    fails = np.zeros((len(lists), len(stages)), dtype=bool)
    acc._mark_listed(fails, lists)
    want = np.zeros_like(fails)
    unknown = Counter()
    for row, entries in enumerate(lists.to_pylist()):
        for s in entries or []:
            if s in stages:
                want[row, stages.index(s)] = True
            elif s != READ_STAGE:
                unknown[s] += 1
    assert np.array_equal(fails, want) and fails.any()
    assert acc.unknown == unknown == Counter({"other": 2, "zzz": 1, None: 1})


def test_read_ahead_keeps_order_and_raises_at_the_failing_item():
    seen = []
    assert [r for _, r in read_ahead(range(7), lambda i: i * i)] == [i * i for i in range(7)]
    assert list(read_ahead([], lambda i: i)) == [] and list(read_ahead([3], lambda i: -i)) == [(3, -3)]

    def read(i):
        if i == 4:
            raise OSError(f"file {i} is unreadable")
        return i

    with pytest.raises(OSError, match="file 4"):
        for item, _ in read_ahead(range(8), read):
            seen.append(item)
    assert seen == [0, 1, 2, 3]
