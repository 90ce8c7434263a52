"""Packaging of the OCR stack: one OpenCV distribution and one ONNX Runtime distribution installed
(each pair ships the same module, and the later install silently overwrites the other's files),
and the PP-OCR weights text_detect loads come from the installed rapidocr-onnxruntime wheel."""

from __future__ import annotations

import importlib.metadata as md
import os
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
OPENCVS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
ORTS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def _installed(names) -> list[str]:
    out = []
    for name in names:
        try:
            md.version(name)
            out.append(name)
        except md.PackageNotFoundError:
            pass
    return out


def test_one_opencv_and_one_onnxruntime_distribution():
    assert len(_installed(OPENCVS)) == 1, _installed(OPENCVS)
    assert len(_installed(ORTS)) == 1, _installed(ORTS)


def test_setup_py_pins_a_single_opencv():
    text = (REPO / "setup.py").read_text()
    required = set(re.findall(r'"(opencv[-\w]*)', text))
    assert required == {"opencv-python"}, required
    assert "rapidocr-onnxruntime" in text


def test_ppocr_weights_come_from_the_wheel():
    from beam_filter.models.text_detect import PPOCR_DET, PPOCR_REC, rapidocr_model

    for name in (PPOCR_DET, PPOCR_REC):
        path = rapidocr_model(name)
        assert os.path.getsize(path) > 1_000_000, path
        assert "rapidocr_onnxruntime" in path
