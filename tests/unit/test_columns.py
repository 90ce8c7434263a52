"""The column contract (columns.py): a stage reading a column nothing provides fails before any work.

The same contract through the CLI (issue 13's regressions): tests/e2e/test_column_contract.py.
"""

from __future__ import annotations

import pytest
import yaml

from beam_filter import columns
from beam_filter.errors import UserError
from beam_filter.recipe import list_presets, load_recipe, parse_recipe
from beam_filter.registry import GroupStage, RuleStage, ScoredStage, all_stages


def _recipe(yaml_text: str):
    return parse_recipe(yaml.safe_load(yaml_text), source="test")


def test_every_registered_stage_declares_one_kind():
    for name, cls in all_stages().items():
        if name in ("any_of", "all_of"):
            continue
        kinds = [k for k in (RuleStage, ScoredStage, GroupStage) if issubclass(cls, k)]
        assert len(kinds) == 1, (name, kinds)


def test_a_misspelt_embedding_names_the_stage_the_column_and_a_fix():
    r = _recipe("stages:\n  - datacomp_basic: {}\n  - clip: {}\n  - semdedup: {embedding: clip_image_embeding}\n")
    with pytest.raises(UserError) as e:
        columns.check_recipe(r.stages, columns.shard_columns())
    msg = str(e.value)
    assert "'semdedup'" in msg and "'clip_image_embeding'" in msg and "did you mean 'clip_image_embedding'" in msg
    assert "\n" not in msg


def test_a_column_from_a_later_stage_is_refused():
    r = _recipe("stages:\n  - near_dedup: {quality: clip_score}\n  - clip: {}\n")
    with pytest.raises(UserError, match="near_dedup.*'clip_score'"):
        columns.check_recipe(r.stages, columns.shard_columns())
    columns.check_recipe(_recipe("stages:\n  - clip: {}\n  - near_dedup: {quality: clip_score}\n").stages,
                         columns.shard_columns())


def test_scores_provide_only_what_was_stored():
    stored = columns.Available(columns.SCORES, columns.SAMPLE_COLUMNS | {"lang", "lang_score"}, "s/")
    columns.check_recipe(load_recipe("datacomp_basic").stages, stored)
    with pytest.raises(UserError, match="'phash'.*scores in s/"):
        columns.check_recipe(load_recipe("near_dedup").stages, stored)


def test_metadata_rows_use_datacomp_columns():
    meta = columns.Available(columns.METADATA, frozenset({"uid", "caption", "width", "height", "sha256",
                                                          "clip_l14_similarity_score", "l14_img"}), "m/")
    for preset in ("datacomp_basic", "datacomp_clip_l14_30pct"):
        columns.check_recipe(load_recipe(preset).stages, meta)
    with pytest.raises(UserError, match="semdedup.*'clip_image_embedding'.*its embeddings: l14_img"):
        columns.check_recipe(load_recipe("semdedup").stages, meta)
    ok = load_recipe("semdedup", ["semdedup.embedding=l14_img"])
    columns.check_recipe(ok.stages, meta)


def test_a_combinator_checks_each_child():
    r = _recipe("stages:\n  - any_of:\n      stages: [ {caption_length: {min_words: 3}}, "
                "{mlm: {metric: su, threshold: 85}} ]\n")
    columns.check_recipe(r.stages, columns.shard_columns())
    stored = columns.Available(columns.SCORES, columns.SAMPLE_COLUMNS, "s/")
    with pytest.raises(UserError, match="'mlm'.*'mlm_semantic_understanding_score'"):
        columns.check_recipe(r.stages, stored)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_is_consistent_on_shards(preset):
    c_in = ["imagenet_clusters.centroids=c.npy", "imagenet_clusters.targets=t.npy"]
    needs = {"open_qwen2vl": ["dfn_or_mlm.dfn.path=x.npy"], "hype_dfn": ["hype_or_dfn.dfn.path=x.npy", *c_in],
             "hype": c_in,
             "tmars_released": ["tmars.path=x.npy"],
             "image_based": ["image_based.centroids=c.npy", "image_based.targets=t.npy"],
             "image_based_intersect_clip_score": ["image_based.centroids=c.npy", "image_based.targets=t.npy"]}
    recipe = load_recipe(preset, needs.get(preset, []))
    columns.check_recipe(recipe.stages, columns.shard_columns())
