"""The caption stages' adapters called directly: captions tables, the sieve and captioner stages' columns."""

from __future__ import annotations

import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_filter.errors import UserError
from beam_filter.registry import build_stage
from beam_filter.stages.captions import NO_TABLE_CAPTION, load_caption_table


def test_caption_tables_from_parquet_and_jsonl(tmp_path):
    pq.write_table(pa.table({"key": ["AB", "cd", "ab"], "text": ["one", '["x","y"]', "later duplicate"]}),
                   str(tmp_path / "a.parquet"))
    (tmp_path / "b.jsonl").write_text('{"key": "ef", "text": ["p", "q"]}\n\n{"key": "gh", "text": null}\n')
    table = load_caption_table(str(tmp_path), "key", "text")
    assert table == {"ab": '["one"]', "cd": '["x","y"]', "ef": '["p","q"]', "gh": "[]"}
    assert load_caption_table(str(tmp_path / "*.jsonl"), "key", "text") == {"ef": '["p","q"]', "gh": "[]"}
    with pytest.raises(UserError, match="no such file"):
        load_caption_table(str(tmp_path / "missing.parquet"), "key", "text")
    with pytest.raises(UserError, match="cannot read columns"):
        load_caption_table(str(tmp_path / "a.parquet"), "uid", "text")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(UserError, match="line 1"):
        load_caption_table(str(tmp_path / "bad.jsonl"), "key", "text")


def test_captions_table_stage_joins_by_uid_and_can_drop_the_missing(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"uid": "AA" * 16, "caption": "a dog"}) + "\n")
    stage = build_stage("generated", "captions_table", {"path": str(tmp_path / "t.jsonl"), "missing": "drop"})
    assert stage.feature_columns() == ("generated_captions",)
    hit = stage.features(types.SimpleNamespace(uid="aa" * 16))
    miss = stage.features(types.SimpleNamespace(uid="bb" * 16))
    assert hit == {"generated_captions": '["a dog"]'} and miss == {"generated_captions": None}
    assert stage.reason(hit) is None and stage.reason(miss) == NO_TABLE_CAPTION
    keep = build_stage("generated", "captions_table", {"path": str(tmp_path / "t.jsonl")})
    assert keep.reason(miss) is None and keep.needs() == ()


def test_sieve_stage_columns_and_threshold():
    stage = build_stage("sieve", "sieve", {"captions": "gen_captions", "threshold": 0.5})
    assert stage.score_columns() == ("sieve_score", "sieve_best_caption")
    assert stage.needs()[0].columns == ("gen_captions",)
    sample = types.SimpleNamespace(caption="alt", features={"gen_captions": '["a","b"]'})
    assert stage.model_input(sample) == ("alt", ["a", "b"])
    assert stage.model_columns({"score": 0.7, "best": 1, "best_caption": "b"}) == {
        "sieve_score": 0.7, "sieve_best_caption": "b"}
    assert stage.reason({"sieve_score": 0.5}) is None
    assert stage.reason({"sieve_score": 0.49}) == "sieve_below_threshold"
    assert stage.reason({"sieve_score": float("nan")}) == "sieve_below_threshold"
    assert not stage.needs_global_info() and stage.rank_spec() is None
    ranked = build_stage("sieve", "sieve", {"fraction": 0.2})
    assert ranked.rank_spec().fraction == 0.2 and ranked.needs_global_info()
    with pytest.raises(UserError, match="not both"):
        build_stage("sieve", "sieve", {"fraction": 0.2, "threshold": 0.1})


def test_captioner_stage_is_score_only_and_keys_captions_by_uid():
    stage = build_stage("captioner", "captioner", {})
    assert (stage.p.num_captions, stage.p.top_p, stage.p.max_length, stage.p.min_length,
            stage.p.repetition_penalty, stage.p.image_size) == (8, 0.9, 20, 5, 1.1, 224)    # SIEVE's
    assert stage.score_columns() == ("captioner_captions",) and stage.reason({}) is None
    sample = types.SimpleNamespace(uid="u", image=b"jpg")
    assert stage.model_input(sample) == ("u", b"jpg")
    assert stage.model_columns({"captions": ["a", "b"], "error": None}) == {"captioner_captions": '["a","b"]'}
    assert stage.model_columns({"captions": [], "error": "corrupt_image"}) == {"read_error": "corrupt_image"}
    assert "seed" in stage.score_config() and "device" not in stage.score_config()
    with pytest.raises(UserError, match="min_length"):
        build_stage("captioner", "captioner", {"min_length": 30})


def test_clip_generated_scores_the_generated_caption_without_a_metadata_stand_in():
    stage = build_stage("clip_generated", "clip_generated", {"captions": "captioner_captions", "threshold": 0.2})
    sample = types.SimpleNamespace(image=b"jpg", caption="raw", features={"captioner_captions": '["gen"]'})
    assert stage.model_input(sample) == (b"jpg", "gen")
    assert [n.columns for n in stage.needs()] == [("captioner_captions",), ("clip_generated_score",)]
    assert not stage.p.flip
