"""Face area fractions (rules/faces.py) and the face_area stage on DataComp metadata face_bboxes."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest

from beam_filter.datacomp_metadata import iter_metadata_rows
from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata
from beam_filter.recipe import parse_recipe
from beam_filter.rules import faces


def _union_by_inclusion_exclusion(boxes) -> float:
    """Independent exact union area: sum over non-empty subsets of (-1)^(k+1) * intersection."""
    total = 0.0
    for k in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, k):
            x0 = max(b[0] for b in subset)
            y0 = max(b[1] for b in subset)
            x1 = min(b[2] for b in subset)
            y1 = min(b[3] for b in subset)
            total += (-1) ** (k + 1) * max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return total


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces_meta")
    write_synthetic_metadata(str(d), 1500, seed=23, parts=2)     # a seed no other test uses
    return str(d)


def test_fractions_equal_an_independent_computation_on_held_out_metadata(held_out):
    parts = sorted(p for p in os.listdir(held_out) if p.endswith(".parquet"))
    df = pd.concat([pd.read_parquet(os.path.join(held_out, p)) for p in parts], ignore_index=True)
    with_faces = 0
    for boxes in df.face_bboxes:
        boxes = [list(map(float, b)) for b in boxes]
        with_faces += bool(boxes)
        largest = max(((b[2] - b[0]) * (b[3] - b[1]) for b in boxes), default=0.0)
        assert faces.largest_face_fraction(boxes) == pytest.approx(largest, abs=1e-12)
        assert faces.total_face_fraction(boxes) == pytest.approx(_union_by_inclusion_exclusion(boxes), abs=1e-9)
    assert with_faces > 100
    overlapping = [b for b in df.face_bboxes if len(b) > 1 and
                   faces.total_face_fraction(b) < sum((x[2] - x[0]) * (x[3] - x[1]) for x in b) - 1e-9]
    assert overlapping, "the held-out metadata must hold overlapping faces to test the union"


def test_stage_reads_face_bboxes_of_metadata_rows(held_out):
    stage = parse_recipe({"stages": [{"face_area": {"max_largest_fraction": 0.2,
                                                    "max_total_fraction": 0.3}}]}).stages[0]
    parts = sorted(os.path.join(held_out, p) for p in os.listdir(held_out) if p.endswith(".parquet"))
    rows = [r for p in parts for r in iter_metadata_rows(p, None)]
    assert len(rows) == 1500
    dropped = 0
    for r in rows:
        boxes = [list(map(float, b)) for b in r["face_bboxes"]]
        largest = max(((b[2] - b[0]) * (b[3] - b[1]) for b in boxes), default=0.0)
        expect = largest > 0.2 or _union_by_inclusion_exclusion(boxes) > 0.3
        assert (stage.reason(r) == faces.FACE_AREA_REASON) == expect
        dropped += expect
    assert 0 < dropped < 1500


def test_boxes_are_clipped_and_malformed_ones_ignored():
    assert faces.clean_boxes([[-0.5, 0.5, 0.5, 1.5], [0.2, 0.2, 0.1, 0.4], [0, 0, float("nan"), 1], "x"]) == \
        [(0.0, 0.5, 0.5, 1.0)]
    assert faces.face_fractions([]) == (0.0, 0.0, 0)
    assert faces.total_face_fraction([[0, 0, 1, 1], [0.2, 0.2, 0.4, 0.4]]) == 1.0
    text = faces.encode_boxes([[0.1, 0.2, 0.3, 0.4]])
    assert faces.decode_boxes(text) == [(0.1, 0.2, 0.3, 0.4)]
    assert faces.decode_boxes(None) == [] and faces.decode_boxes("not json") == []
    assert faces.decode_boxes(np.array([[0.1, 0.2, 0.3, 0.4]])) == [(0.1, 0.2, 0.3, 0.4)]
    assert faces.face_area_reason(0.3, 0.3, 0.3, None) is None             # MORE than the bound drops
    assert faces.face_area_reason(0.31, 0.31, 0.3, None) == faces.FACE_AREA_REASON


def test_scrfd_decoding_and_nms():
    """The SCRFD output decoder (models/faces.decode_scrfd) on hand-made outputs: two anchors of one
    face (suppressed to one box) and a second face; the real weights are not on PyPI."""
    from beam_filter.models.faces import decode_scrfd, nms

    size, strides, anchors = 64, (8, 16, 32), 2
    scores = [np.zeros(((size // s) ** 2 * anchors, 1), np.float32) for s in strides]
    dists = [np.zeros(((size // s) ** 2 * anchors, 4), np.float32) for s in strides]
    # stride 8, cell (x=2, y=3) -> centre (16, 24); both of its anchors fire on one face
    cell = 3 * (size // 8) + 2
    scores[0][2 * cell] = 0.9
    scores[0][2 * cell + 1] = 0.8
    dists[0][2 * cell] = [1, 1, 1, 2]              # x 8..24, y 16..40 in the 64-px input
    dists[0][2 * cell + 1] = [1, 1, 1, 1.8]
    # stride 16, cell (x=3, y=0) -> centre (48, 0), one anchor, another face
    scores[1][2 * 3] = 0.7
    dists[1][2 * 3] = [0.5, 0, 0.5, 1]             # x 40..56, y 0..16
    scores[2][0] = 0.4                              # below the threshold
    boxes = decode_scrfd(scores + dists, strides, anchors, size, scale=0.5, width=128, height=100)
    # input pixels / 0.5 = original pixels, then / (128, 100)
    want = [[16 / 128, 32 / 100, 48 / 128, 80 / 100], [80 / 128, 0.0, 112 / 128, 32 / 100]]
    assert np.allclose(boxes, want, atol=1e-6)
    assert nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float), np.array([0.5, 0.9, 0.1]), 0.4) == [1, 2]


def test_missing_detector_file_fails_when_the_recipe_loads(tmp_path):
    from beam_filter.errors import UserError

    stage = parse_recipe({"stages": [{"face_area": {"detector": str(tmp_path / "scrfd.onnx")}}]}).stages[0]
    with pytest.raises(UserError, match="no such file"):
        stage.check_weights()
    parse_recipe({"stages": [{"face_area": {}}]}).stages[0].check_weights()      # haar: nothing to check
