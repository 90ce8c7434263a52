"""Describing a model stage for report.json must not import its model module (models/clip.py
pulls Beam's RunInference and torch: 3.7 s of a metadata-only select's finalize)."""

from __future__ import annotations

import hashlib
import sys

from beam_filter.models.provenance import clip_provenance
from beam_filter.registry import build_stage


def test_clip_and_hype_provenance_without_the_model_modules(monkeypatch, tmp_path):
    # A None entry makes `from beam_filter.models.clip import ...` raise ImportError.
    for name in ("beam_filter.models.clip", "beam_filter.models.hype", "torch", "open_clip"):
        monkeypatch.setitem(sys.modules, name, None)
    clip = build_stage("clip_b32", "clip", {"model": "ViT-B-32", "pretrained": "openai", "threshold": 0.25})
    assert clip.provenance()["model"] == {"name": "ViT-B-32", "pretrained": "openai"}
    assert build_stage("hype", "hype", {}).provenance()["model"]["name"]
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    assert clip_provenance("ViT-B-32", str(ckpt)) == {
        "name": "ViT-B-32", "pretrained": str(ckpt), "checkpoint_sha256": hashlib.sha256(b"weights").hexdigest()}
