"""A uid listed k times in a DataComp subset file is written k times, as DataComp's resharder
does: the expected output is computed here from resharder.py's rule (searchsorted left/right on
the sorted u8,u8 subset, then ``{uid}-{j}`` for j in range(count)), reading the source tars
with tarfile, never with beam_filter's reader."""

from __future__ import annotations

import collections
import glob
import io
import json
import tarfile

import numpy as np
import pytest


def _source_uids(pool_dir: str) -> tuple[list[str], set[str]]:
    """(uid of every sample whose json has one, in tar order; uids of samples that are whole:
    a 32-hex uid, a caption and an image PIL opens -- the pool also holds hostile records)."""
    from PIL import Image

    samples = collections.defaultdict(dict)
    for path in sorted(glob.glob(f"{pool_dir}/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and "." in m.name:
                    key, ext = m.name.split(".", 1)
                    samples[(path, key)][ext] = tar.extractfile(m).read()
    uids, whole, broken = [], set(), set()
    for members in samples.values():
        try:
            uid = json.loads(members["json"])["uid"]
        except Exception:
            continue
        if not (isinstance(uid, str) and len(uid) == 32 and all(c in "0123456789abcdef" for c in uid)):
            continue
        uids.append(uid)
        try:
            Image.open(io.BytesIO(members["jpg"])).load()
            ok = bool(members["txt"].decode().strip())
        except Exception:
            ok = False
        (whole if ok else broken).add(uid)
    return uids, whole - broken


def _datacomp_subset(uids: list[str]) -> np.ndarray:
    arr = np.array([divmod(int(u, 16), 2 ** 64) for u in uids], np.dtype("u8,u8"))
    arr.sort()
    return arr


def _datacomp_resharder_keys(source_uids, subset) -> collections.Counter:
    """resharder.py: count = searchsorted(right) - searchsorted(left); keys {uid}-{j}."""
    want = collections.Counter()
    for uid in source_uids:
        key = np.array([divmod(int(uid, 16), 2 ** 64)], np.dtype("u8,u8"))[0]
        count = int(np.searchsorted(subset, key, "right") - np.searchsorted(subset, key, "left"))
        want.update(f"{uid}-{j}" for j in range(count))
    return want


def _written(out) -> tuple[collections.Counter, collections.Counter]:
    """(sample names, json uids) over the output shards."""
    names, uids = collections.Counter(), collections.Counter()
    for path in sorted(glob.glob(str(out / "shards" / "*.tar"))):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    names[m.name[:-5]] += 1
                    uids[json.load(tar.extractfile(m))["uid"]] += 1
    return names, uids


@pytest.mark.parametrize("uid_keys", [True, False])
def test_a_uid_listed_k_times_is_written_k_times(clean_pool, tmp_path, run_cli, uid_keys):
    pool_dir, _ = clean_pool
    source, whole = _source_uids(pool_dir)
    rng = np.random.default_rng(0)
    chosen = rng.choice(sorted(whole), 40, replace=False)
    listed = [u for n, u in enumerate(chosen) for _ in range(1 + n % 3)]           # 1, 2 or 3 times
    listed += ["f" * 32, "f" * 32]                                                 # not in the pool
    subset = _datacomp_subset(listed)
    np.save(tmp_path / "subset.npy", subset)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: subset\nstages:\n  - uid_subset: {{path: {tmp_path}/subset.npy}}\n")
    out = tmp_path / "out"
    args = ["run", "--recipe", str(recipe), "--input", f"{pool_dir}/*.tar", "--output", str(out),
            "--shard-size", "25"]
    assert run_cli(*(args + (["--uid-keys"] if uid_keys else []))) == 0
    want = _datacomp_resharder_keys(source, subset)
    names, uids = _written(out)
    copies = collections.Counter(k.rsplit("-", 1)[0] for k in want)
    assert max(copies.values()) == 3 and uids == copies
    if uid_keys:
        assert names == want
    else:   # a single copy keeps its source key; several are {uid}-{j}
        assert {n for n in names if "-" in n} == {k for k in want if copies[k.rsplit("-", 1)[0]] > 1}
    got = np.load(out / "uids.npy")
    assert np.array_equal(got, _datacomp_subset([k.rsplit("-", 1)[0] for k in want]))
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["kept_with_copies"] == sum(want.values())

