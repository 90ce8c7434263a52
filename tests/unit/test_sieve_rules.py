"""SIEVE's pure rule (masking, max cosine), fused scores and the output-caption rule, called directly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from beam_filter.errors import UserError
from beam_filter.output_captions import (NO_GENERATED, NO_PAIR_PASSES, choose_caption, rewrite_members)
from beam_filter.registry import build_stage
from beam_filter.rules.fused_score import (add_values, check_weights, empty_ranges, fused_value,
                                           merge_ranges)
from beam_filter.rules.sieve import MEDIUM_PHRASES, as_caption_list, dump_captions, mask_phrases, sieve_score


def test_medium_phrases_are_the_published_list_in_order():
    assert MEDIUM_PHRASES == ("an image of", "a photo of", "stock photo", "photo stock",
                              "a photo", "an image", "image", "photo")


@pytest.mark.parametrize("text, masked", [
    ("A Photo of a dog on a beach", "a dog on a beach"),          # case-insensitive, "a photo of" first
    ("Stock Photo - red car", "- red car"),
    ("photography studio", "graphy studio"),                       # plain substrings, not words
    ("An image of an IMAGE", ""),                                  # "an image of", then "an image"
    ("Imagery", "ry"),
    ("a photo stock of cats", "a of cats"),                        # "photo stock" goes before "a photo"
    ("", ""),
    (None, ""),
])
def test_mask_phrases(text, masked):
    assert mask_phrases(text) == masked


def test_sieve_score_is_the_max_cosine_and_zero_when_the_best_caption_is_empty():
    alt = np.array([1.0, 0.0], np.float32)
    caps = np.array([[0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], np.float32)
    score, best = sieve_score(alt, caps, ["a", "b", "c"])
    assert best == 1 and score == pytest.approx(0.8)
    score, best = sieve_score(alt, caps, ["a", "", "c"])         # best caption masked to nothing
    assert (score, best) == (0.0, 1)
    assert sieve_score(alt, np.zeros((0, 2)), []) == (0.0, -1)


def test_caption_lists_round_trip_every_stored_form():
    caps = ["a dog", "ünïcode \"quoted\""]
    assert as_caption_list(dump_captions(caps)) == caps
    assert as_caption_list(caps) == caps
    assert as_caption_list("one plain caption") == ["one plain caption"]
    assert as_caption_list("[not json") == ["[not json"]
    assert as_caption_list(None) == [] and as_caption_list(float("nan")) == []
    assert dump_captions(caps) == json.dumps(caps, ensure_ascii=False, separators=(",", ":"))


def test_fused_value_is_the_weighted_sum_of_min_max_normalised_columns():
    rows = [(1.0, 10.0), (3.0, 30.0), (2.0, float("nan")), (5.0, 20.0)]
    half = [add_values(empty_ranges(2), r) for r in rows[:2]] + [add_values(empty_ranges(2), r) for r in rows[2:]]
    ranges = merge_ranges(half)
    assert ranges == [[1.0, 5.0], [10.0, 30.0]]
    assert fused_value((3.0, 30.0), ranges, (0.5, 0.5)) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    assert math.isnan(fused_value((2.0, float("nan")), ranges, (0.5, 0.5)))
    assert fused_value((4.0, 10.0), [[4.0, 4.0], [10.0, 30.0]], (0.5, 0.5)) == 0.0   # constant column: 0
    assert math.isnan(fused_value((1.0,), [[None, None]], (1.0,)))


@pytest.mark.parametrize("weights, problem", [
    ({"a": 0.5, "b": 0.5}, None),
    ({"a": 0.5, "b": 0.4}, "sums to 0.9"),
    ({"a": -0.5, "b": 1.5}, "weights are finite numbers >= 0"),
    ({}, "non-empty"),
    ({"a": True}, "weights are finite"),
])
def test_check_weights(weights, problem):
    found = check_weights(weights)
    assert (found is None) if problem is None else (problem in found)


def test_fused_rank_stage_declares_every_column_and_checks_its_parameters():
    stage = build_stage("f", "fused_rank", {"weights": {"sieve_score": 0.5, "clip_score|clip_l14_similarity_score": 0.5},
                                            "fraction": 0.2})
    assert [n.columns for n in stage.needs()] == [("sieve_score",), ("clip_score", "clip_l14_similarity_score")]
    assert not stage.is_model_stage and stage.needs_global_info() and stage.score_config() is None
    assert stage.values({"sieve_score": 0.3, "clip_l14_similarity_score": 0.2}) == (0.3, 0.2)
    with pytest.raises(UserError, match="sums to 0.9"):
        build_stage("f", "fused_rank", {"weights": {"a": 0.5, "b": 0.4}, "fraction": 0.2})
    with pytest.raises(UserError, match="fraction or threshold"):
        build_stage("f", "fused_rank", {"weights": {"a": 1.0}})


def test_choose_caption_follows_the_mixing_rule():
    assert choose_caption("mix", "gen", 0.30, 0.10, 0.25, 0.25) == ("raw", None, None)
    assert choose_caption("mix", "gen", 0.20, 0.30, 0.25, 0.25) == ("generated", "gen", None)
    assert choose_caption("mix", "gen", 0.20, 0.20, 0.25, 0.25).reason == NO_PAIR_PASSES
    assert choose_caption("mix", "", 0.20, 0.90, 0.25, 0.25).reason == NO_PAIR_PASSES     # nothing generated
    assert choose_caption("mix", "gen", None, float("nan"), 0.25, 0.25).reason == NO_PAIR_PASSES
    assert choose_caption("generated", "gen") == ("generated", "gen", None)
    assert choose_caption("generated", None) == ("raw", None, None)
    assert choose_caption("generated", None, drop_without_generated=True).reason == NO_GENERATED
    assert choose_caption("raw", "gen") == ("raw", None, None)


def test_rewrite_members_writes_the_caption_and_keeps_the_original_in_the_json():
    meta = {"uid": "ab" * 16, "caption": "raw words", "url": "http://x", "width": 3}
    members = {"jpg": b"\xff\xd8", "txt": b"raw words", "json": json.dumps(meta).encode()}
    out = rewrite_members(members, "a generated caption")
    assert out["jpg"] is members["jpg"] and out["txt"] == b"a generated caption"
    new = json.loads(out["json"])
    assert list(new) == ["uid", "caption", "url", "width", "original_caption"]    # source key order kept
    assert new["caption"] == "a generated caption" and new["original_caption"] == "raw words"
    assert rewrite_members(members, "a generated caption") == out                  # deterministic bytes
    assert rewrite_members({"jpg": b"x", "json": b"[1]"}, "c") == {"jpg": b"x", "json": b"[1]", "txt": b"c"}


def test_output_caption_stage_records_its_choice_as_verdict_columns():
    stage = build_stage("output_caption", "output_caption", {"mode": "mix", "raw_threshold": 0.25})
    assert stage.verdict_columns() == ("output_caption", "caption_choice")
    assert [n.columns[0] for n in stage.needs()] == ["captioner_captions", "clip_score", "clip_generated_score"]
    row = {"uid": "u", "shard": "s", "key": "k", "captioner_captions": '["gen one","gen two"]',
           "clip_score": 0.1, "clip_generated_score": 0.3}
    v = stage.verdict(row)
    assert v.reason is None and v.columns == {"output_caption": "gen one", "caption_choice": "generated"}
    with pytest.raises(UserError, match="raw_threshold"):
        build_stage("o", "output_caption", {"mode": "mix"})
