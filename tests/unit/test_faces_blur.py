"""Face blurring of output images (output_blur.py): only the face region changes, deterministically."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from beam_filter.output_blur import FaceBlur, blur_faces


def _photo(w=200, h=160, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)      # high-frequency texture: blur shows
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _arr(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_blur_changes_the_face_box_and_leaves_the_rest():
    src = _photo()
    box = [0.25, 0.25, 0.5, 0.5]                      # x 50..100, y 40..80 px
    out = blur_faces(src, [box], "png")
    assert out == blur_faces(src, [box], "png")       # same bytes every run
    a, b = _arr(src), _arr(out)
    inside = np.abs(a[45:75, 55:95] - b[45:75, 55:95]).mean()
    outside = np.abs(a[120:, 150:] - b[120:, 150:]).mean()
    assert inside > 30 and outside == 0
    # the blurred face is smooth: neighbouring pixels differ far less than in the noise
    assert np.abs(np.diff(b[50:70, 60:90], axis=1)).mean() < np.abs(np.diff(a[50:70, 60:90], axis=1)).mean() / 3
    assert blur_faces(src, [], "png") is src
    jpeg = blur_faces(src, [box], "jpg")
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_face_blur_prefers_json_face_bboxes(tmp_path):
    src = _photo()
    members = {"png": src, "txt": b"a cap", "json": json.dumps({"face_bboxes": [[0.1, 0.1, 0.4, 0.4]]}).encode()}
    blur = FaceBlur(str(tmp_path))            # no scores there: json only
    out = blur.members("s.tar", "k", members)
    assert out is not members and out["png"] != src and out["txt"] == b"a cap" and out["json"] == members["json"]
    plain = {"png": src, "json": b"{}"}
    assert blur.members("s.tar", "k", plain) is plain
