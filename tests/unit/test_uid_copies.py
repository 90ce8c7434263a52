"""uid multiplicity: UidSet.count equals how often a uid is listed (DataComp's searchsorted
right - left), for np.save files and raw memmaps, and the uid_subset stage turns it into copies."""

from __future__ import annotations

import collections

import numpy as np

from beam_filter.registry import build_stage
from beam_filter.rules.uid_subset import uid_subset_copies
from beam_filter.selection import decide_locally
from beam_filter.uids import UidSet, load_uids


def _uids(rng, n):
    hi = rng.integers(0, 4, size=n)           # few high words: many uids share one
    lo = rng.integers(0, 50, size=n)
    return [f"{h:016x}{l:016x}" for h, l in zip(hi, lo)]


def test_count_is_the_listed_multiplicity(tmp_path):
    rng = np.random.default_rng(0)
    listed = _uids(rng, 300)
    arr = np.array([divmod(int(u, 16), 2 ** 64) for u in listed], np.dtype("u8,u8"))
    np.save(tmp_path / "s.npy", np.sort(arr))
    np.sort(arr).tofile(tmp_path / "s.raw")          # DataComp's resharder also takes a raw memmap
    want = collections.Counter(listed)
    for path in (tmp_path / "s.npy", tmp_path / "s.raw"):
        s = UidSet(load_uids(str(path)))
        for u in set(_uids(rng, 400)) | set(listed):
            assert s.count(u) == want.get(u, 0), u
        assert s.count("zz") == 0 and s.count(None) == 0 and "f" * 33 not in s
    assert UidSet(np.zeros(0, np.dtype("u8,u8"))).count("ab") == 0
    # short uids are left-padded to 32 hex chars, as DataComp does
    assert UidSet(np.array([(0, 0xab)], np.dtype("u8,u8"))).count("ab") == 1


def test_uid_subset_stage_gives_copies(tmp_path):
    listed = ["a" * 32, "b" * 32, "b" * 32, "c" * 32, "c" * 32, "c" * 32]
    arr = np.array([divmod(int(u, 16), 2 ** 64) for u in listed], np.dtype("u8,u8"))
    np.save(tmp_path / "s.npy", arr)
    keep = build_stage("s", "uid_subset", {"path": str(tmp_path / "s.npy")})
    once = build_stage("s", "uid_subset", {"path": str(tmp_path / "s.npy"), "copies": False})
    drop = build_stage("s", "uid_subset", {"path": str(tmp_path / "s.npy"), "mode": "drop"})
    for uid, n in (("a" * 32, 1), ("b" * 32, 2), ("c" * 32, 3), ("d" * 32, 0)):
        row = decide_locally({"uid": uid, "shard": "x", "key": uid}, [keep])
        assert (row["kept"], row["copies"]) == (n > 0, n)
        assert decide_locally({"uid": uid, "shard": "x", "key": uid}, [once])["copies"] == min(n, 1)
        assert decide_locally({"uid": uid, "shard": "x", "key": uid}, [drop])["copies"] == (0 if n else 1)
    assert uid_subset_copies(3, "drop") is None and uid_subset_copies(1) is None and uid_subset_copies(4) == 4


def test_a_remote_subset_is_copied_once_per_machine_and_memory_mapped(tmp_path):
    from beam_filter.uids import machine_copy

    src = tmp_path / "src" / "dfn.npy"
    src.parent.mkdir()
    arr = np.sort(np.array([(1, 2), (1, 2), (3, 4)], np.dtype("u8,u8")))
    np.save(src, arr)
    cache = tmp_path / "cache"
    cache.mkdir()
    first = machine_copy(str(src), str(cache))
    assert first != str(src) and open(first, "rb").read() == src.read_bytes()
    assert machine_copy(str(src), str(cache)) == first and len(list(cache.iterdir())) == 1   # reused
    np.save(src, np.concatenate([arr, arr]))                  # replaced: copied again
    second = machine_copy(str(src), str(cache))
    assert second != first and UidSet(load_uids(second)).count(f"{1:016x}{2:016x}") == 4
    assert isinstance(np.load(second, mmap_mode="r"), np.memmap)
    assert machine_copy(str(tmp_path / "missing.npy"), str(cache)) == str(tmp_path / "missing.npy")
