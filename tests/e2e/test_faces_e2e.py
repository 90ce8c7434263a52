"""face_area end to end: the detector on shards with --apply-blur, and DataComp metadata face_bboxes."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _write_pool(directory):
    import matplotlib.cbook as cbook

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        portrait = f.read()
    rng = np.random.default_rng(5)
    noise = _png(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8))
    plain = _png(np.full((160, 200, 3), 200, np.uint8))
    samples = [("000000000", "jpg", portrait, {}),                                   # detector finds the face
               ("000000001", "png", noise, {"face_bboxes": [[0.1, 0.1, 0.5, 0.6]]}),  # DataComp json boxes
               ("000000002", "png", plain, {})]                                      # no face: bytes as read
    os.makedirs(directory, exist_ok=True)
    with tarfile.open(os.path.join(directory, "00000000.tar"), "w") as t:
        for i, (key, ext, img, extra) in enumerate(samples):
            meta = json.dumps({"uid": f"{i + 1:032x}", "caption": "a person standing in a room", **extra}).encode()
            for e, blob in ((ext, img), ("txt", b"a person standing in a room"), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{e}")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    return {key: img for key, _, img, _ in samples}


def _written(out):
    got = {}
    for path in glob.glob(os.path.join(out, "shards", "*.tar")):
        with tarfile.open(path) as t:
            for m in t.getmembers():
                key, ext = m.name.rsplit(".", 1)
                if ext in ("jpg", "png"):
                    got[key] = t.extractfile(m).read()
    return got


def test_detector_scores_and_apply_blur(tmp_path, run_cli):
    pool = str(tmp_path / "pool")
    source = _write_pool(pool)
    recipe = tmp_path / "faces.yaml"
    recipe.write_text("stages:\n  - face_area: {max_largest_fraction: 0.5}\n")
    plain_out, blur_out = str(tmp_path / "plain"), str(tmp_path / "blur")
    assert run_cli("run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", plain_out) == 0
    assert run_cli("run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", blur_out,
                   "--apply-blur") == 0

    scores = pq.read_table(os.path.join(blur_out, "scores", "00000000.parquet")).to_pylist()
    by_key = {r["key"]: r for r in scores}
    assert by_key["000000000"]["face_area_count"] == 1
    assert 0.05 < by_key["000000000"]["face_area_largest_fraction"] < 0.35
    assert by_key["000000002"]["face_area_count"] == 0
    assert json.loads(by_key["000000000"]["face_area_bboxes"])[0][0] > 0.2

    # without --apply-blur every image is written byte for byte; with it, only faces change
    assert _written(plain_out) == source
    blurred = _written(blur_out)
    assert blurred["000000002"] == source["000000002"]
    for key, box in (("000000000", json.loads(by_key["000000000"]["face_area_bboxes"])[0]),
                     ("000000001", [0.1, 0.1, 0.5, 0.6])):
        a = np.asarray(Image.open(io.BytesIO(source[key])).convert("RGB")).astype(int)
        b = np.asarray(Image.open(io.BytesIO(blurred[key])).convert("RGB")).astype(int)
        h, w = a.shape[:2]
        x0, y0, x1, y1 = (int(box[0] * w) + 5, int(box[1] * h) + 5, int(box[2] * w) - 5, int(box[3] * h) - 5)
        assert np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean() > 3
    meta = json.load(open(os.path.join(blur_out, "shards", "meta.json")))
    assert meta["blur"]["apply_blur"] is True and meta["blur"]["samples_blurred"] == 2
    assert "blur" not in json.load(open(os.path.join(plain_out, "shards", "meta.json")))
    # reshard alone finds the detector's boxes in the scores beside --decisions
    again = str(tmp_path / "again")
    assert run_cli("reshard", "--decisions", plain_out, "--input", f"{pool}/*.tar", "--output", again,
                   "--apply-blur") == 0
    assert _written(again) == blurred


def test_select_on_metadata_uses_face_bboxes(datacomp_meta, tmp_path, run_cli):
    recipe = tmp_path / "faces.yaml"
    recipe.write_text("stages:\n  - face_area: {max_largest_fraction: 0.15, max_total_fraction: 0.3}\n")
    out = str(tmp_path / "sel")
    assert run_cli("select", "--recipe", recipe, "--metadata", f"{datacomp_meta.dir}/metadata",
                   "--output", out) == 0
    rows = []
    for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
        rows.extend(pq.read_table(f, columns=["uid", "kept", "reason"]).to_pylist())
    df = datacomp_meta.ref.df
    assert len(rows) == len(df)

    def drop(boxes):      # independent: per-box areas, union by a 1000 x 1000 raster
        boxes = [list(map(float, b)) for b in boxes]
        if not boxes:
            return False
        grid = np.zeros((1000, 1000), bool)
        for x0, y0, x1, y1 in boxes:
            grid[round(y0 * 1000):round(y1 * 1000), round(x0 * 1000):round(x1 * 1000)] = True
        largest = max((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
        return largest > 0.15 or grid.mean() > 0.3

    expected = pd.Series([drop(b) for b in df.face_bboxes], index=df.uid)
    got = {r["uid"]: r["reason"] == "face_area_above_max" for r in rows}
    assert got == expected.to_dict() and 0 < expected.sum() < len(df)
