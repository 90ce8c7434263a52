"""The ``clip`` stage without a model: parameters, score settings, DataComp metadata fallback columns.

Its columns and thresholds in Beam pipelines: tests/beam/test_clip_stage_pipelines.py.
"""

from __future__ import annotations

import pytest

from beam_filter.errors import UserError
from beam_filter.registry import ScoredStage, build_stage


def test_params_are_validated():
    with pytest.raises(UserError, match="not both"):
        build_stage("c", "clip", {"threshold": 0.2, "fraction": 0.3})
    with pytest.raises(UserError, match="flip=true"):
        build_stage("c", "clip", {"filter_on": "flipped_score", "flip": False})
    with pytest.raises(UserError):
        build_stage("c", "clip", {"fraction": 1.5})
    with pytest.raises(UserError):
        build_stage("c", "clip", {"filter_on": "flipped"})
    s = build_stage("clip_l14", "clip", {"model": "ViT-L-14", "fraction": 0.3})
    assert s.is_model_stage and isinstance(s, ScoredStage) and s.kind == "scored"
    assert s.score_config() == {"model": "ViT-L-14", "pretrained": "openai", "precision": "auto",
                                "draft": False, "decode": "cpu", "flip": True}


def test_metadata_fallback_columns():
    b32 = build_stage("c", "clip", {"model": "ViT-B-32", "threshold": 0.3})
    l14 = build_stage("c", "clip", {"model": "ViT-L-14", "threshold": 0.3})
    row = {"clip_b32_similarity_score": 0.31, "clip_l14_similarity_score": 0.29}
    assert b32.reason(row) is None and l14.reason(row) == "c_score_below_threshold"
    assert b32.reason({**row, "c_score": 0.1}) == "c_score_below_threshold"   # own column wins
    other = build_stage("c", "clip", {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "threshold": 0.3})
    with pytest.raises(UserError, match="no column for model"):
        other.reason(row)
    flipped = build_stage("c", "clip", {"model": "ViT-L-14", "filter_on": "flipped_score", "threshold": 0.3})
    with pytest.raises(UserError):
        flipped.reason(row)
    prov = l14.provenance()
    assert prov["model"]["name"] == "ViT-L-14" and prov["threshold_applied"] == 0.3
    assert prov["metadata_fallback"]["score"] == "clip_l14_similarity_score"
