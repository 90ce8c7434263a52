"""The face detector handler (models/faces.py) through RunInference: OpenCV's Haar cascade from the wheel."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def _grace_hopper() -> bytes:
    import matplotlib.cbook as cbook

    with open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb") as f:
        return f.read()       # a real portrait shipped in matplotlib's wheel (512 x 600)


def _noise() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_haar_finds_the_face_through_run_inference():
    import apache_beam as beam
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.testing.util import assert_that

    from beam_filter.models.faces import FaceModelHandler, haar_cascade_path
    from beam_filter.rules.faces import face_fractions

    assert haar_cascade_path().endswith("haarcascade_frontalface_default.xml")
    examples = [("face", _grace_hopper()), ("noise", _noise()), ("broken", b"\xff\xd8broken")]

    def check(results):
        by = dict(results)
        face, noise, broken = by["face"], by["noise"], by["broken"]
        assert len(face["boxes"]) == 1 and face["error"] is None
        x0, y0, x1, y1 = face["boxes"][0]
        # the face sits in the upper middle of the portrait, a few percent to a third of the image
        assert 0.2 < x0 < 0.5 < x1 < 0.8 and 0.05 < y0 < 0.35 < y1 < 0.7
        largest, total, n = face_fractions(face["boxes"])
        assert 0.05 < largest == total < 0.35 and n == 1
        assert noise == {"boxes": [], "error": None}
        assert broken["error"] == "corrupt_image" and broken["boxes"] == []

    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions(["--runner=DirectRunner"])) as p:
        out = p | beam.Create(examples) | RunInference(KeyedModelHandler(FaceModelHandler(batch_size=2)))
        assert_that(out | beam.combiners.ToList(), lambda lists: check(lists[0]))


def test_unknown_detector_is_a_user_error():
    from beam_filter.errors import UserError
    from beam_filter.models.faces import load_detector

    with pytest.raises(UserError, match="haar"):
        load_detector("retina")
    with pytest.raises(UserError):
        load_detector("/nonexistent/scrfd.onnx")
