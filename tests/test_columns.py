"""The column contract (columns.py): a stage reading a column nothing provides fails before any work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from beam_filter import columns
from beam_filter.errors import UserError
import yaml

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
    needs = {"open_qwen2vl": ["dfn_or_mlm.dfn.path=x.npy"],
             "image_based": ["image_based.centroids=c.npy", "image_based.targets=t.npy"],
             "image_based_intersect_clip_score": ["image_based.centroids=c.npy", "image_based.targets=t.npy"]}
    recipe = load_recipe(preset, needs.get(preset, []))
    columns.check_recipe(recipe.stages, columns.shard_columns())


def _cli(*args, cwd):
    env = {**os.environ, "BEAM_FILTER_OFFLINE": "1"}
    quiet = ["--no-progress"] if args[0] in ("run", "score", "select", "reshard") else []
    p = subprocess.run([sys.executable, "-m", "beam_filter.cli", *args, *quiet], cwd=cwd,
                       capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


def test_cli_refuses_the_typo_before_any_work(clean_pool, tmp_path):
    (tmp_path / "typo.yaml").write_text(
        "name: typo\nstages:\n  - datacomp_basic: {}\n  - semdedup: {embedding: clip_image_embeding}\n")
    code, err = _cli("run", "--recipe", "typo.yaml", "--input", f"{clean_pool[0]}/*.tar", "--output", "out",
                     cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'semdedup'" in err[0] and "'clip_image_embeding'" in err[0]
    assert not (tmp_path / "out" / "decisions").exists()


def test_select_on_scores_without_the_needed_feature_stops(clean_pool, tmp_path):
    """Issue 13: scores from datacomp_basic, then near_dedup on them kept 114 with 0 duplicates."""
    code, err = _cli("score", "--recipe", "datacomp_basic", "--input", f"{clean_pool[0]}/*.tar",
                     "--output", "s", cwd=tmp_path)
    assert code == 0, err
    code, err = _cli("select", "--recipe", "near_dedup", "--scores", "s", "--output", "o", cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'near_dedup'" in err[0] and "'phash'" in err[0]
    # The same scores do serve a recipe whose columns they hold.
    code, err = _cli("select", "--recipe", "datacomp_basic", "--scores", "s", "--output", "o2", cwd=tmp_path)
    assert code == 0, err


def test_select_refuses_scores_made_with_other_model_settings(clean_pool, tmp_path):
    """Columns are named after stage ids: `clip_b32_score` from one model must not pass for another's."""
    code, err = _cli("make-test-models", "models", cwd=tmp_path)
    assert code == 0, err
    code, err = _cli("score", "--recipe", "datacomp_b32_th025", "--input", f"{clean_pool[0]}/*.tar",
                     "--output", "s", "--test-models", "models", cwd=tmp_path)
    assert code == 0, err
    # A new threshold is what select is for: it works on the stored scores.
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o1",
                     "--test-models", "models", "--set", "clip_b32.threshold=0.1", cwd=tmp_path)
    assert code == 0, err
    # Other score settings (another model, other weights, no mirrored pass) are not.
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o2",
                     "--set", "clip_b32.flip=true", "--test-models", "models", cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'clip_b32'" in err[0] and "flip=False (this recipe: True)" in err[0]
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o3",
                     "--set", "clip_b32.pretrained=other.pt", cwd=tmp_path)
    assert code == 2 and len(err) == 1 and "other.pt" in err[0], err
