"""Resharder parity: with a DataComp subset file, `run --uid-keys --inject-blur-metadata` writes
what DataComp's resharder.py writes -- each listed sample count times as ``{uid}-{j}``, its json
with the metadata's face_bboxes when it has a face, other members unchanged, ``successes`` in
every _stats.json and the resharder's counters in meta.json. The reference is resharder.py's
rule written here over tarfile and pyarrow, not beam_filter's reader or writer."""

from __future__ import annotations

import collections
import glob
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _samples(pool_dir: str) -> list[tuple[str, dict]]:
    out = collections.OrderedDict()
    for path in sorted(glob.glob(f"{pool_dir}/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile() and "." in m.name:
                    key, ext = m.name.split(".", 1)
                    out.setdefault((path, key), {})[ext] = tar.extractfile(m).read()
    return list(out.items())


def _whole(members: dict) -> str | None:
    """The uid of a sample beam-filter reads whole (json uid, caption, decodable image), else None."""
    from PIL import Image

    try:
        uid = json.loads(members["json"])["uid"]
        Image.open(io.BytesIO(members["jpg"])).load()
        assert members["txt"].decode().strip()
        return uid if len(uid) == 32 else None
    except Exception:
        return None


def test_uid_keys_and_injected_face_boxes_match_datacomps_resharder(clean_pool, tmp_path, run_cli):
    pool_dir, _ = clean_pool
    samples = [(k, m, _whole(m)) for k, m in _samples(pool_dir)]
    good = sorted({u for _, _, u in samples if u})
    rng = np.random.default_rng(1)
    listed = [u for n, u in enumerate(rng.choice(good, 30, replace=False)) for _ in range(1 + n % 2)]
    subset = np.array([divmod(int(u, 16), 2 ** 64) for u in listed], np.dtype("u8,u8"))
    subset.sort()
    np.save(tmp_path / "subset.npy", subset)
    # DataComp metadata with face boxes for some uids (others empty, as in the released parquets)
    meta_dir = tmp_path / "metadata"
    meta_dir.mkdir()
    boxes = {u: ([[0.1, 0.2, 0.3, 0.4]] if i % 3 == 0 else []) for i, u in enumerate(good)}
    pq.write_table(pa.table({"uid": list(boxes), "face_bboxes": list(boxes.values())}), meta_dir / "00000000.parquet")

    # resharder.py, written out: per sample, count by searchsorted; keys {uid}-{j}; inject non-empty boxes
    want = {}
    for _, members, uid in samples:
        if uid is None:
            continue
        key = np.array([divmod(int(uid, 16), 2 ** 64)], np.dtype("u8,u8"))[0]
        count = int(np.searchsorted(subset, key, "right") - np.searchsorted(subset, key, "left"))
        d = dict(members)
        if count and boxes.get(uid):
            j = json.loads(d["json"])
            j["face_bboxes"] = list(map(list, boxes[uid]))
            d["json"] = j
        else:
            d["json"] = json.loads(d["json"])
        for j in range(count):
            want[f"{uid}-{j}"] = d

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: subset\nstages:\n  - uid_subset: {{path: {tmp_path}/subset.npy}}\n")
    out = tmp_path / "out"
    assert run_cli("run", "--recipe", str(recipe), "--input", f"{pool_dir}/*.tar", "--output", str(out),
                   "--shard-size", "16", "--uid-keys", "--inject-blur-metadata", "--blur-metadata", str(meta_dir)) == 0
    got, successes = {}, 0
    for path in sorted(glob.glob(str(out / "shards" / "*.tar"))):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                got.setdefault(key, {})[ext] = json.loads(data) if ext == "json" else data
        with open(path[:-4] + "_stats.json") as f:
            successes += json.load(f)["successes"]
    assert got == want and len(want) == len(listed)
    assert any("face_bboxes" in v["json"] for v in got.values())
    assert successes == len(want)
    meta = json.loads((out / "shards" / "meta.json").read_text())
    assert meta["output_count"] == len(want) and meta["output_shard_count"] == -(-len(want) // 16)
    assert meta["processed_count"] == len(samples) and meta["uid_keys"] is True
    assert meta["inject_blur_metadata"]["inject_blur_metadata"] is True
