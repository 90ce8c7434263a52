"""Verdict files (verdict_files.py): a group stage's verdicts written by part and applied back by
selection.advance_rows exactly as the general graph's join applies them."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from beam_filter import records as R
from beam_filter.identity import row_token
from beam_filter.layout import OutputLayout, verdicts_name, verdicts_path
from beam_filter.records import Verdict
from beam_filter.verdict_files import (group_rows, read_verdicts, slim_columns, token_shard, verdicts_for,
                                       write_verdicts)


def _recipe(text: str):
    import yaml

    from beam_filter.recipe import parse_recipe

    return parse_recipe(yaml.safe_load(text))


def _row(i: int, shard: str = "/pool/00000001.tar", **cols) -> dict:
    return {R.UID: f"u{i:03d}", R.SHARD: shard, R.KEY: f"{i:05d}", R.READ_ERROR: None, **cols}


def test_write_then_read_keeps_every_value_as_the_decisions_writer_would_store_it(tmp_path):
    path = str(tmp_path / "v.parquet")
    pairs = [("b\ts\t2", Verdict("near_duplicate_of:a")),
             ("a\ts\t1", Verdict(None, 3, {"c_cluster": np.int64(7), "c_sim": np.float32(0.25), "n": None,
                                           "x": float("nan"), "flag": np.bool_(True), "name": "k"})),
             ("c\ts\t3", Verdict(None, 0))]
    assert write_verdicts(path, pairs) == 3
    got = read_verdicts(path)
    assert list(got) == ["a\ts\t1", "b\ts\t2", "c\ts\t3"]                   # sorted by token
    assert got["b\ts\t2"] == Verdict("near_duplicate_of:a", None, None)
    assert got["c\ts\t3"] == Verdict(None, 0, None)
    cols = got["a\ts\t1"].columns
    assert got["a\ts\t1"].copies == 3
    assert cols["c_cluster"] == 7 and type(cols["c_cluster"]) is int
    assert cols["c_sim"] == 0.25 and type(cols["c_sim"]) is float
    assert cols["flag"] is True and cols["name"] == "k" and cols["n"] is None and math.isnan(cols["x"])
    with open(path, "rb") as f:
        first = f.read()
    write_verdicts(path, list(reversed(pairs)))                               # same pairs, any order
    with open(path, "rb") as f:
        assert f.read() == first


def test_a_part_without_a_file_has_no_verdicts(tmp_path):
    assert read_verdicts(str(tmp_path / "none.parquet")) == {}
    assert verdicts_for(str(tmp_path), "semdedup", [_row(1)]) == {}


def test_file_names_are_flat_and_split_at_the_quoted_stage_id(tmp_path):
    assert verdicts_name("near_dedup", "/pool/00000001.tar") == "near_dedup@00000001.parquet"
    assert verdicts_name("a@b/c", "gs://b/x/00000002.parquet") == "a%40b%2Fc@00000002.parquet"
    assert verdicts_name("s", "/pool/00000003.tar#cc12m") == "s@cc12m.00000003.parquet"
    layout = OutputLayout(str(tmp_path))
    assert verdicts_path(layout.verdicts_dir, "s", "/p/7.tar") == os.path.join(str(tmp_path), "verdicts", "s@7.parquet")
    assert token_shard(row_token(_row(4, shard="/p/9.tar"))) == "/p/9.tar"


def test_advance_rows_applies_a_verdict_file_like_the_join(tmp_path):
    """The file route gives the bookkeeping of selection.apply_verdict: reasons only on alive rows,
    copies, extra columns, and rows without a verdict unchanged."""
    from beam_filter.selection import advance_rows, apply_verdict, finish_rows, start_decision

    recipe = _recipe("name: t\nstages:\n  - caption_length: {min_words: 2}\n"
                              "  - caption_frequency: {max_count: 1}\n")
    rule, group = recipe.stages
    rows = [_row(1, caption="one two"), _row(2, caption="x"), _row(3, caption="one two"), _row(4, caption="a b c")]
    verdicts = {row_token(rows[0]): Verdict(None, None, {"caption_frequency_count": 2}),
                row_token(rows[1]): Verdict("frequent_caption", None, {"caption_frequency_count": 1}),
                row_token(rows[2]): Verdict("frequent_caption", None, {"caption_frequency_count": 2})}
    directory = OutputLayout(str(tmp_path)).verdicts_dir
    write_verdicts(verdicts_path(directory, group.id, rows[0][R.SHARD]), verdicts.items())

    by_file = finish_rows(advance_rows([dict(r) for r in rows], recipe.stages, {group.id: directory}))
    expected = []
    for r in (dict(r) for r in rows):
        start_decision(r)
        from beam_filter.selection import apply_stage

        apply_stage(rule, r)
        apply_verdict(group.id, r, verdicts.get(row_token(r)))
        expected.append(r)
    assert by_file == finish_rows(expected)
    assert [r[R.STAGE] for r in by_file] == [None, "caption_length", "caption_frequency", None]
    assert "caption_frequency_count" not in by_file[1] and "caption_frequency_count" not in by_file[3]


def test_advance_rows_refuses_a_group_stage_whose_verdicts_were_not_computed():
    from beam_filter.selection import advance_rows

    recipe = _recipe("name: t\nstages:\n  - exact_dedup: {}\n")
    with pytest.raises(ValueError, match="exact_dedup"):
        advance_rows([_row(1, sha256="aa")], recipe.stages, {})


def test_slim_rows_hold_the_identity_and_the_declared_columns_of_the_alive_rows(tmp_path):
    from beam_filter import tables

    recipe = _recipe("name: t\nstages:\n  - caption_length: {min_words: 2}\n"
                              "  - near_dedup: {quality: clip_score}\n"
                              "  - semdedup: {embedding: emb}\n")
    assert slim_columns(recipe.stages[1]) == (R.UID, R.SHARD, R.KEY, "phash", "clip_score")
    assert slim_columns(recipe.stages[2]) == (R.UID, R.SHARD, R.KEY, "emb")
    rows = [_row(1, caption="one two", phash=5, clip_score=0.3, width=10, emb=np.ones(4, np.float32)),
            _row(2, caption="x", phash=6, clip_score=0.2, width=11),
            _row(3, caption="three four", phash=None, clip_score=None, width=12)]
    part = str(tmp_path / "00000001.parquet")
    tables.write_rows(part, rows)
    slim = group_rows(part, recipe.stages, 1)
    assert slim == [{R.UID: "u001", R.SHARD: "/pool/00000001.tar", R.KEY: "00001", "phash": 5, "clip_score": 0.3},
                    {R.UID: "u003", R.SHARD: "/pool/00000001.tar", R.KEY: "00003", "phash": None,
                     "clip_score": None}]


def test_run_by_parts_takes_only_group_stages_whose_scores_files_suffice():
    """`run` selects by part over the scores it wrote only when that gives the general graph's bytes:
    no group stage reading an embedding (stored fp16) nor adding verdict columns (the general graph's
    scores files carry them)."""
    from beam_filter.pipeline import _run_by_parts_fits
    from beam_filter.selection import can_select_by_parts

    stages = _recipe(
        "name: t\nstages:\n  - caption_length: {min_words: 2}\n  - exact_dedup: {}\n"
        "  - near_dedup: {quality: clip_score}\n  - dedup_sim: {type: near_dedup, min_similarity: 0.9}\n"
        "  - semdedup: {}\n  - caption_frequency: {}\n  - fused: {type: fused_rank, weights: {a: 1.0}, "
        "fraction: 0.5}\n").stages
    assert [_run_by_parts_fits(s) for s in stages] == [True, True, True, False, False, False, True]
    assert can_select_by_parts(stages[:-1]) and can_select_by_parts(stages)   # fused_rank too (summary_spec)


def test_verdict_files_are_the_outputs_own_work_files(tmp_path):
    """Removed when the job ends (remove_work_files); a killed run's leftovers go with --overwrite and
    --resume, like every file beam-filter writes (output_dir.py)."""
    from beam_filter import output_dir

    out = str(tmp_path / "out")
    layout = OutputLayout(out)
    for flags in ({"overwrite": True, "resume": False}, {"overwrite": False, "resume": True}, None):
        output_dir.prepare_output(out, overwrite=True, resume=False).release()
        left = verdicts_path(layout.verdicts_dir, "semdedup", "/p/00000001.tar")
        write_verdicts(left, [("u\t/p/00000001.tar\tk", Verdict("x"))])
        assert layout.verdict_files() == [left]
        if flags is None:
            output_dir.remove_work_files(out)
        else:
            output_dir.prepare_output(out, **flags).release()
        assert not os.path.exists(left) and not os.path.exists(layout.verdicts_dir), flags
