"""The T-MARS and OCR presets end to end: `beam-filter run --recipe tmars|ocr_english|tmars_released
--test-models DIR`, offline, on a generated pool of rendered-text images, text-free shape images
and a corrupt image; every sample accounted for, the cut applied as stated, the report drawn."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_filter.rules import ocr


@pytest.fixture(scope="module")
def text_pool(tmp_path_factory, text_images):
    d = tmp_path_factory.mktemp("text_pool")
    samples = text_images.write_pool(str(d / "pool"), n_text=5, n_plain=5, seed=4)
    models = str(d / "models")
    from beam_filter.stages.clip import ClipStage
    from beam_filter.stages.ocr import TextDetectStage

    ClipStage.write_test_model(models)          # only these recipes' models (make-test-models writes all)
    TextDetectStage.write_test_model(models)
    return str(d / "pool"), samples, models


def _run(run_cli, tmp_path, text_pool, recipe, *extra, name=None):
    pool, samples, models = text_pool
    out = str(tmp_path / (name or f"out_{recipe}"))
    assert run_cli("run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", out,
                   "--test-models", models, *extra) == 0
    rows = [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]
    assert sorted(r["key"] for r in rows) == [s["key"] for s in samples]   # one row per sample
    return out, {r["key"]: r for r in rows}


def test_tmars_preset(run_cli, tmp_path, text_pool):
    _, samples, _ = text_pool
    out, rows = _run(run_cli, tmp_path, text_pool, "tmars")
    kinds = {s["key"]: s["kind"] for s in samples}
    for key, r in rows.items():
        if kinds[key] == "corrupt":
            assert not r["kept"] and r["reason"] == "corrupt_image"
            continue
        boxes = ocr.decode_boxes(r["text_boxes"])
        assert r["text_box_count"] == len(boxes)
        assert (len(boxes) > 0) == (kinds[key] == "text"), (key, r["ocr_text"])
        if kinds[key] == "plain":
            assert r["clip_l14_masked_score"] == r["clip_l14_score"]      # nothing to mask
        else:
            assert r["clip_l14_masked_score"] != r["clip_l14_score"]
    # the cut: DataComp's rank-n rule on the masked score, half of the alive rows
    scored = sorted((r["clip_l14_masked_score"] for r in rows.values() if r["reason"] != "corrupt_image"),
                    reverse=True)
    n = int(len(scored) * 0.5)
    thr = json.load(open(os.path.join(out, "thresholds", "clip_l14.json")))
    assert thr["column"] == "clip_l14_masked_score" and thr["threshold"] == pytest.approx(scored[n])
    for r in rows.values():
        if r["reason"] != "corrupt_image":
            assert r["kept"] == (r["clip_l14_masked_score"] >= thr["threshold"])
            assert r["kept"] or r["reason"] == "clip_l14_masked_score_below_threshold"
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["counts"]["samples"] == len(samples)
    assert report["provenance"]["models"]["text_detect"]["detector"] == "ppocr"
    # same input and recipe: byte-identical scores, decisions and shards
    again, _ = _run(run_cli, tmp_path, text_pool, "tmars", name="again")
    for sub in ("scores", "decisions", "shards"):
        names = sorted(os.listdir(os.path.join(out, sub)))
        assert names == sorted(os.listdir(os.path.join(again, sub))) and names
        for n in names:
            a, b = (open(os.path.join(d, sub, n), "rb").read() for d in (out, again))
            assert a == b, (sub, n)


def test_ocr_english_preset_and_report(run_cli, tmp_path, text_pool):
    _, samples, _ = text_pool
    out, rows = _run(run_cli, tmp_path, text_pool, "ocr_english", "--set", "text_area.max_fraction=0.07")
    for s in samples:
        r = rows[s["key"]]
        if s["kind"] == "corrupt":
            assert r["reason"] == "corrupt_image"
        elif s["kind"] == "plain":
            assert r["kept"], r
        elif r["text_area_fraction"] > 0.07:
            assert r["reason"] == "text_area_above_max"
        elif not s["caption"].endswith("on a sign"):       # caption = the words in the image
            assert r["reason"] == "caption_mostly_ocr_text", (s["caption"], r["ocr_text"])
        else:
            assert r["kept"], (s["caption"], r["ocr_text"])
    assert any(r["reason"] == "caption_mostly_ocr_text" for r in rows.values())
    # report: the text-area histogram with the applied cut, thumbnails of kept and dropped samples
    assert os.path.isfile(os.path.join(out, "report_hist_text_area_fraction.png"))
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "text_area_fraction" in html and html.count("data:image/jpeg") >= 8
    assert 'title="ocr"' in html            # what the recogniser read, under the outlined thumbnails


def test_tmars_released_keeps_the_listed_uids(run_cli, tmp_path, text_pool):
    _, samples, _ = text_pool
    listed = sorted(s["uid"] for s in samples[:3])
    path = str(tmp_path / "tmars_uids.npy")
    np.save(path, np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in listed), dtype="u8,u8"))
    _, rows = _run(run_cli, tmp_path, text_pool, "tmars_released", "--set", f"tmars.path={path}")
    assert sorted(r["uid"] for r in rows.values() if r["kept"]) == listed
