"""The devil_details preset end to end, offline with --test-models: every part shows in the decisions
and the report, every sample is accounted for, digit images are added back."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _card(text, seed, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(170, 255, 3)))
    if text:
        ImageDraw.Draw(img).text((30, 80), text, font=ImageFont.load_default(size=56), fill=(10, 10, 10))
    return _jpeg(img)


def _photo(seed, size=(320, 240)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return _jpeg(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC))


def _write_pool(directory):
    import matplotlib.cbook as cbook

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        portrait = f.read()
    numbers = "a sign with numbers on the wall"
    wall = "a plain wall painted in one colour"
    samples = [
        (portrait, "a woman in a navy uniform with medals"),             # face 16% of the image
        (_card("2024", 1), numbers), (_card("No 7", 2), numbers),          # frequent caption, digits
        (_card("", 3), wall), (_card("", 4), wall),                        # frequent caption, no digits
        (_card("hello", 5), "a greeting written on a card"),
        (_photo(6, (100, 320)), "a tall narrow photo of a tower"),         # w/h 0.3125 < 0.33
        (_photo(7), "a dog running on the beach near the water"),
        (_photo(8), "a red car parked on the street at night"),
        (_photo(9), "two children sitting at a table with food"),
        (_photo(10), "a small house under a blue sky with trees"),
        (b"\xff\xd8broken", "a broken picture of a cat"),
    ]
    os.makedirs(directory, exist_ok=True)
    keys = []
    with tarfile.open(os.path.join(directory, "00000000.tar"), "w") as t:
        for i, (img, cap) in enumerate(samples):
            key = f"{i:09d}"
            keys.append(key)
            meta = json.dumps({"uid": f"{i + 100:032x}", "caption": cap}).encode()
            for ext, blob in (("jpg", img), ("txt", cap.encode()), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    return keys


def test_devil_details_preset_offline(tmp_path, run_cli):
    from beam_filter.stages.blip_itm import BlipItmStage
    from beam_filter.stages.clip import ClipStage

    pool = str(tmp_path / "pool")
    keys = _write_pool(pool)
    models = str(tmp_path / "models")
    ClipStage.write_test_model(models)        # only this preset's model twins (make-test-models writes all)
    BlipItmStage.write_test_model(models)
    target = str(tmp_path / "target.npy")
    np.save(target, np.random.default_rng(0).normal(size=(20, 32)).astype(np.float32))   # tiny CLIP: 32-d
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "devil_details", "--input", f"{pool}/*.tar", "--output", out,
                   "--test-models", models, "--apply-blur",
                   "--set", f"cluster_importance.target={target}",
                   "--set", "caption_frequency.max_count=1",
                   "--set", "face_area.max_largest_fraction=0.1") == 0

    rows = {}
    for f in glob.glob(os.path.join(out, "decisions", "*.parquet")):
        for r in pq.read_table(f).to_pylist():
            rows[r["key"]] = r
    assert sorted(rows) == keys                     # every sample has exactly one decision row
    by = [rows[k] for k in keys]
    assert by[0]["reason"] == "face_area_above_max" and by[0]["face_area_largest_fraction"] > 0.1
    for r in by[1:3]:                               # dropped as frequent, added back for their digits
        assert r["kept"] and r["reason"] == "added_back:has_digits" and r["stage"] == "caption_frequency"
        assert r["caption_frequency_count"] == 2 and any(c.isdigit() for c in r["ocr_text"])
    for r in by[3:5]:
        assert not r["kept"] and r["reason"] == "frequent_caption" and r["caption_frequency_count"] == 2
    assert by[6]["reason"] == "aspect_ratio_too_extreme"
    assert by[11]["reason"] == "corrupt_image"
    for r in by[:11]:                               # every readable sample got both cross-modal scores
        assert 0 <= r["blip_itm_score"] <= 1 and -1 <= r["clip_flipped_score"] <= 1
    written = set()
    for t in glob.glob(os.path.join(out, "shards", "*.tar")):
        with tarfile.open(t) as tar:
            written |= {m.name.split(".", 1)[0].split("-", 1)[0] for m in tar.getmembers()}
    assert {by[1]["key"], by[2]["key"]} <= written | {by[1]["uid"], by[2]["uid"]}

    report = json.load(open(os.path.join(out, "report.json")))
    assert report["counts"]["samples"] == len(keys)
    assert report["added_back"] == {"has_digits": 2}
    stages = [s["stage"] for s in report["funnel"]]
    for part in ("caption_frequency", "image_size", "face_area", "text_detect", "clip", "blip_itm",
                 "near_dedup", "semdedup", "cluster_importance", "quality_duplication", "add_back"):
        assert part in stages
    assert report["funnel"][-1]["out"] == report["counts"]["kept"]
    uids = {f"{a:016x}{b:016x}" for a, b in np.load(os.path.join(out, "uids.npy")).tolist()}
    assert {by[1]["uid"], by[2]["uid"]} <= uids
    meta = json.load(open(os.path.join(out, "shards", "meta.json")))
    assert meta["blur"]["apply_blur"] is True
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert 'data-stage="has_digits" data-count="2"' in html and 'data-stage="blip_itm"' in html
    for column in ("blip_itm_score", "clip_flipped_score", "face_area_largest_fraction"):
        assert os.path.isfile(os.path.join(out, f"report_hist_{column}.png")), column
