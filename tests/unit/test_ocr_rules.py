"""Pure OCR rules (rules/ocr.py), the OCR stages' reasons and parameters, the masked view of
image_prep, thumbnails with boxes and the report's fixed cut -- no Beam, no model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from beam_filter import columns
from beam_filter.errors import UserError
from beam_filter.models import image_prep
from beam_filter.recipe import load_recipe, parse_recipe
from beam_filter.registry import build_stage
from beam_filter.report.data import _fixed_cuts
from beam_filter.report.thumbnails import make_thumbnail
from beam_filter.rules import ocr
from beam_filter.stages.ocr import detection_columns


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_boxes_round_trip_compactly():
    polys = [rect(1, 2, 30, 12), [(5.4, 6.6), (9, 6), (9, 9), (4, 10), (3, 8)]]
    s = ocr.encode_boxes(polys)
    assert s == "1,2,30,2,30,12,1,12;5,7,9,6,9,9,4,10,3,8"
    back = ocr.decode_boxes(s)
    assert [b.tolist() for b in back] == [[[1, 2], [30, 2], [30, 12], [1, 12]],
                                          [[5, 7], [9, 6], [9, 9], [4, 10], [3, 8]]]
    assert ocr.encode_boxes([]) == "" and ocr.decode_boxes("") == [] and ocr.decode_boxes(None) == []
    for bad in ("1,2,3", "1,2,3,4,5,6,7", "a,b,c,d,e,f"):
        with pytest.raises(ValueError):
            ocr.decode_boxes(bad)


def test_area_fraction_is_the_union_of_the_pixels():
    # Pillow fills a rectangle's outline too: (x1 - x0 + 1) x (y1 - y0 + 1) pixels.
    assert ocr.area_fraction([rect(0, 0, 9, 9)], 100, 10) == pytest.approx(0.1)
    # two overlapping boxes: the overlap counts once
    assert ocr.area_fraction([rect(0, 0, 9, 9), rect(5, 0, 14, 9)], 100, 10) == pytest.approx(0.15)
    assert ocr.area_fraction([rect(0, 0, 99, 9)], 100, 10) == 1.0
    assert ocr.area_fraction([], 100, 10) == 0.0
    assert ocr.polygon_area(rect(0, 0, 10, 5)) == 50.0


def test_confirmation_needs_confidence_and_two_letters_or_digits():
    texts = ["SALE", "三", "ab", "", "  ", "x1", "--"]
    scores = [0.99, 0.98, 0.40, 0.9, 0.9, 0.6, 0.99]
    assert ocr.confirmed(texts, scores, 0.5) == [True, False, False, False, False, True, False]
    assert ocr.confirmed(texts, scores, 0.5, min_chars=1) == [True, True, False, False, False, True, False]
    assert ocr.join_ocr_text(["OPEN  now", "", " x "]) == "OPEN now x"


def test_detection_columns_apply_the_rule():
    out = {"boxes": [np.array(rect(0, 0, 9, 9)), np.array(rect(20, 0, 29, 9))],
           "texts": ["Hi there", "="], "rec_scores": [0.9, 0.95], "det_scores": [0.8, 0.7],
           "width": 100, "height": 10, "error": None}
    cols = detection_columns(out, True, 0.5, 2)
    assert cols == {"text_boxes": "0,0,9,0,9,9,0,9", "text_area_fraction": pytest.approx(0.1),
                    "text_box_count": 1, "text_candidate_count": 2, "ocr_text": "Hi there"}
    raw = detection_columns(out, False, 0.5, 2)
    assert raw["text_box_count"] == 2 and raw["ocr_text"] == "Hi there ="
    assert raw["text_area_fraction"] == pytest.approx(0.2)


def test_fill_regions_with_each_regions_mean():
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, 10:] = 200
    rgb[0, 0] = 90
    tri = [(0, 0), (9, 0), (0, 9)]
    out = ocr.fill_regions(rgb, [tri], "polygon_mean")
    m = ocr.region_mask([tri], 20, 10)
    assert (out[m] == np.rint(rgb[m].mean(0))).all() and (out[~m] == rgb[~m]).all()
    box = ocr.fill_regions(rgb, [[(5, 2), (14, 2), (14, 7), (5, 7)]], "box_mean")
    assert (box[2:8, 5:15] == 100).all() and (box[:2] == rgb[:2]).all()
    assert (rgb[0, 0] == 90).all(), "the input is not modified"
    with pytest.raises(ValueError, match="unknown fill"):
        ocr.fill_regions(rgb, [tri], "blur")


def test_caption_vs_ocr_and_text_area_reasons():
    assert ocr.caption_ocr_overlap("OPEN market", "market  open") == 1.0
    assert ocr.caption_ocr_overlap("river river on a sign", "river river") == pytest.approx(0.4)
    assert ocr.caption_ocr_overlap("", "anything") == 0.0
    assert ocr.caption_is_ocr_reason("Big SALE!", "SALE big", 0.5) == ocr.CAPTION_IS_OCR_REASON
    assert ocr.caption_is_ocr_reason("a dog on a sofa", "SALE", 0.5) is None
    assert ocr.caption_is_ocr_reason("sale", "", 0.5) is None
    assert ocr.text_area_reason(0.31, 0.3) == ocr.TEXT_AREA_REASON
    assert ocr.text_area_reason(0.3, 0.3) is None and ocr.text_area_reason(None, 0.3) is None


def test_stages_reasons_and_parameters():
    area = build_stage("ta", "text_area", {"max_fraction": 0.2})
    assert area.reason({"text_area_fraction": 0.25}) == "text_area_above_max"
    assert area.reason({"text_area_fraction": 0.1}) is None
    assert area.fixed_cut() == ("text_area_fraction", 0.2)
    cap = build_stage("co", "caption_ocr", {})
    assert cap.reason({"caption": "STOP", "ocr_text": "STOP"}) == "caption_mostly_ocr_text"
    assert cap.reason({"caption": "a red stop sign", "ocr_text": "STOP"}) is None
    with pytest.raises(UserError, match="max_fraction"):
        build_stage("ta", "text_area", {})
    with pytest.raises(UserError, match="fast_checkpoint"):
        build_stage("td", "text_detect", {"detector": "fast"})
    with pytest.raises(UserError, match="multiple of 32"):
        build_stage("td", "text_detect", {"det_size": 500})
    with pytest.raises(UserError, match="masked=true"):
        build_stage("c", "clip", {"filter_on": "masked_score", "fraction": 0.5})
    clip = build_stage("c", "clip", {"masked": True, "filter_on": "masked_score", "fraction": 0.5})
    assert "c_masked_score" in clip.score_columns()


def test_masked_clip_needs_text_detect_before_it():
    ok = load_recipe("tmars", [])
    columns.check_recipe(ok.stages, columns.shard_columns())
    wrong = parse_recipe({"name": "wrong", "stages": [
        {"clip": {"masked": True, "filter_on": "masked_score", "fraction": 0.5}}, {"text_detect": {}}]})
    with pytest.raises(UserError, match="text_boxes"):
        columns.check_recipe(wrong.stages, columns.shard_columns())
    for name, extra in (("tmars_released", ["tmars.path=x.npy"]), ("ocr_english", [])):
        columns.check_recipe(load_recipe(name, extra).stages, columns.shard_columns())


def _jpeg(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_masked_view_is_fill_then_resize_from_one_decode():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)
    cfg = image_prep.PrepConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    polys = [rect(10, 10, 60, 30)]
    crop, mirror, masked = image_prep.prepare_image_masked(_jpeg(arr), cfg, False, polys, "polygon_mean")
    ref_crop, ref_mirror = image_prep.prepare_image(_jpeg(arr), cfg, False)
    assert (crop == ref_crop).all()
    filled = ocr.fill_regions(arr, polys, "polygon_mean")
    ref_masked, _ = image_prep.prepare_image(_jpeg(filled), cfg, False)
    assert (masked == ref_masked).all() and not (masked == crop).all()
    batch = image_prep.CpuImagePrep(cfg, draft=False, threads=1).prepare_masked(
        [_jpeg(arr), _jpeg(arr), b"bad"], [polys, [], polys], "polygon_mean")
    assert sorted(batch.masked) == [0] and batch.errors == [None, None, "corrupt_image"]


def test_thumbnail_outlines_the_boxes_and_the_report_draws_the_cut():
    arr = np.full((100, 200, 3), 255, np.uint8)
    plain = Image.open(io.BytesIO(make_thumbnail(_jpeg(arr), 96)))
    boxed = Image.open(io.BytesIO(make_thumbnail(_jpeg(arr), 96, "20,20,180,20,180,80,20,80")))
    def red(im):
        a = np.asarray(im).astype(int)
        return int((a[..., 0] - a[..., 1] > 40).sum())

    assert red(plain) == 0 and red(boxed) > 50, red(boxed)
    assert make_thumbnail(_jpeg(arr), 96, "garbage")      # unreadable boxes: the image alone
    meta = {"recipe": {"stages": [{"id": "ta", "type": "text_area", "params": {"max_fraction": 0.3}},
                                  {"id": "x", "type": "no_such_stage", "params": {}}]}}
    assert _fixed_cuts(meta) == {"ta": {"column": "text_area_fraction", "threshold": 0.3}}
