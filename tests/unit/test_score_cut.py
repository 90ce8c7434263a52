"""The threshold-or-fraction cut scored stages share (stages/score_cut.py), through the real stages that
use it: clip, clip_generated, blip_itm, hype, sieve. Parameters and the both-given error, a fixed
threshold (ties kept, NaN/None/missing scores dropped), a top fraction with the rank-n info of real
values, provenance, and the columnar hook giving what ``reason`` gives -- down to a scores file's
decisions bytes, columnar against the row path."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest

from beam_filter import columnar, tables
from beam_filter.errors import UserError
from beam_filter.layout import OutputLayout
from beam_filter.recipe import parse_recipe
from beam_filter.registry import build_stage
from beam_filter.rules.thresholds import rank_n_info
from beam_filter.shard_work import select_part

# stage type -> (extra params, the column its cut reads for stage id "s", its drop reason)
CUT_STAGES = {
    "clip": ({"flip": False}, "s_score", "s_score_below_threshold"),
    "clip_generated": ({}, "s_score", "s_score_below_threshold"),
    "blip_itm": ({}, "s_score", "s_score_below_threshold"),
    "hype": ({"filter_on": "image_specificity"}, "s_image_specificity_score", "s_image_specificity_below_threshold"),
    "sieve": ({}, "s_score", "s_below_threshold"),
}
VALUES = [0.31, 0.2, None, float("nan"), 0.3, 0.45, 0.3, 0.05, 1, 0.29, 0.3, 0.6]


def _stage(kind, **params):
    extra, column, below = CUT_STAGES[kind]
    return build_stage("s", kind, {**extra, **params}), column, below


@pytest.mark.parametrize("kind", sorted(CUT_STAGES))
def test_parameters_and_the_both_given_error(kind):
    cls_params = list(build_stage("s", kind, CUT_STAGES[kind][0]).params)
    assert cls_params[cls_params.index("threshold") + 1] == "fraction"      # listed together, in this order
    with pytest.raises(UserError, match=r"^stage 's': give threshold or fraction, not both$"):
        _stage(kind, threshold=0.3, fraction=0.5)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
            _stage(kind, fraction=bad)
    if kind == "blip_itm":              # a probability: its threshold is checked too
        with pytest.raises(UserError, match=r"must be in \[0, 1\]"):
            _stage(kind, threshold=1.2)
    else:
        assert _stage(kind, threshold=-3.0)[0].p.threshold == -3.0


@pytest.mark.parametrize("kind", sorted(CUT_STAGES))
def test_a_fixed_threshold_keeps_ties_and_drops_missing_and_nan(kind):
    stage, column, below = _stage(kind, threshold=0.3)
    assert not stage.needs_global_info() and stage.rank_spec() is None
    got = [stage.reason({column: v}) for v in VALUES]
    want = [None if v is not None and not math.isnan(v) and v >= 0.3 else below for v in VALUES]
    assert got == want and got.count(None) == 7
    assert stage.reason({column: 0.3}, info=object()) is None      # a fixed cut ignores any global info
    if kind in ("clip", "clip_generated"):  # a missing column is named in one line
        with pytest.raises(UserError, match="s_score"):
            stage.reason({"other": 1.0})
    else:
        assert stage.reason({"other": 1.0}) == below
    needed = [c for n in stage.needs() for c in n.columns]
    if kind == "clip":                      # B/32 with OpenAI weights: DataComp's metadata column stands in
        assert needed == [column, "clip_b32_similarity_score"]
    elif kind != "sieve":                   # sieve always needs its captions column instead
        assert needed == [column] or needed == ["captioner_captions", column]
    assert stage.provenance()["threshold_applied"] == 0.3


@pytest.mark.parametrize("kind", sorted(CUT_STAGES))
def test_a_top_fraction_uses_the_rank_n_threshold_of_the_alive_rows(kind):
    stage, column, below = _stage(kind, fraction=0.25)
    spec = stage.rank_spec()
    assert stage.needs_global_info() and spec.fraction == 0.25
    if kind == "clip":          # B/32 with OpenAI weights: DataComp's metadata column stands in
        assert spec.columns == (column, "clip_b32_similarity_score")
        assert spec.value({"clip_b32_similarity_score": 0.7}) == 0.7
    else:
        assert spec.value == column or spec.value({column: 0.7}) == 0.7
    info = rank_n_info(VALUES, 0.25, column)        # int(12 * 0.25) = 3: the 4th largest, 0.31
    kept = [v for v in VALUES if stage.reason({column: v}, info) is None]
    assert info.threshold == 0.31 and kept == [0.31, 0.45, 1, 0.6] and len(kept) == info.n_above + info.n_equal
    assert stage.reason({column: 5.0}, None) == below               # no info: no threshold, nothing kept
    assert stage.reason({column: 5.0}, info._replace(threshold=None)) == below      # an empty pool
    assert stage.provenance()["threshold_applied"] == "rank-n over alive rows: see thresholds/s.json"


@pytest.mark.parametrize("kind", sorted(CUT_STAGES))
def test_neither_given_only_scores(kind):
    stage, column, _ = _stage(kind)
    assert not stage.needs_global_info() and stage.rank_spec() is None
    assert stage.reason({column: float("nan")}) is None and stage.reason({}) is None
    assert "threshold_applied" not in stage.provenance()
    if kind != "sieve":                     # (clip_generated always needs the caption it scores)
        assert [n for n in stage.needs() if "captioner_captions" not in n.columns] == []
    part = columnar.PartColumns("p", pa.table({"uid": ["a", "b"]}), None, [], metadata=False)
    assert list(stage.reason_array(part, np.ones(2, bool))) == [None, None]


def _part(columns: dict):
    return columnar.PartColumns("p", pa.table(columns), None, [], metadata=False)


@pytest.mark.parametrize("kind", sorted(CUT_STAGES))
@pytest.mark.parametrize("cut", [{"threshold": 0.3}, {"fraction": 0.5}])
def test_the_columnar_hook_gives_what_reason_gives(kind, cut):
    stage, column, below = _stage(kind, **cut)
    rng = np.random.default_rng(7)
    values = [None if i % 11 == 0 else float("nan") if i % 13 == 0 else round(float(rng.uniform(0, 0.6)), 2)
              for i in range(300)]
    info = rank_n_info(values, 0.5, column) if "fraction" in cut else None
    part = _part({"uid": [f"u{i}" for i in range(300)], column: pa.array(values, pa.float64())})
    got = stage.reason_array(part, np.ones(300, bool), info)
    want = [stage.reason(row, info) for row in part.table.to_pylist()]
    assert list(got) == want and 0 < want.count(None) < 300
    if info is not None:                    # no threshold (an empty pool, or no info): every row fails
        for none in (None, info._replace(threshold=None)):
            assert list(stage.reason_array(part, np.ones(300, bool), none)) == [below] * 300 == \
                [stage.reason(row, none) for row in part.table.to_pylist()]
    assert _part({"uid": ["a"]}).has(column) is False
    assert stage.reason_array(_part({"uid": ["a"]}), np.ones(1, bool), info) is None       # the row path
    assert stage.reason_array(_part({column: ["0.5"]}), np.ones(1, bool), info) is None    # says why
    ints = _part({column: pa.array([0, 1, None], pa.int64())})
    assert list(stage.reason_array(ints, np.ones(3, bool), info)) == \
        [stage.reason(r, info) for r in ints.table.to_pylist()]


def test_clip_reads_datacomps_column_where_a_part_has_no_score_of_its_own():
    stage = build_stage("s", "clip", {"threshold": 0.3, "model": "ViT-L-14"})
    part = _part({"clip_l14_similarity_score": [0.1, 0.3, None]})
    assert list(stage.reason_array(part, np.ones(3, bool))) == \
        [stage.reason(r) for r in part.table.to_pylist()] == ["s_score_below_threshold", None,
                                                               "s_score_below_threshold"]


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory):
    """A scores file of the stages above (each with its own id): NaN, None, ties, read errors."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(240):
        err = "corrupt_image" if i % 37 == 0 else None

        def score():
            return None if err or i % 19 == 0 else float("nan") if i % 23 == 0 else round(float(rng.uniform()), 2)
        rows.append({"uid": f"{int(rng.integers(1 << 62)):032x}", "shard": "/pool/00001.tar", "key": f"{i:05d}",
                     "read_error": err, "warning": None, "caption": "a photo", "gen_captions": '["a dog"]',
                     "blip_score": score(), "sieve_score": score(), "hype_image_specificity_score": score(),
                     "clip_score": score(), "cg_score": score()})
    path = str(tmp_path_factory.mktemp("score_cut") / "scores" / "00001.parquet")
    os.makedirs(os.path.dirname(path))
    tables.write_rows(path, rows)
    return path


@pytest.mark.parametrize("stages", [
    [{"blip": {"type": "blip_itm", "threshold": 0.4}}, {"sieve": {"captions": "gen_captions", "threshold": 0.3}}],
    [{"hype": {"filter_on": "image_specificity", "threshold": 0.2}},
     {"clip": {"threshold": 0.5, "flip": False}},
     {"cg": {"type": "clip_generated", "captions": "gen_captions", "threshold": 0.1}}],
])
def test_a_scores_file_gets_the_row_paths_bytes(scores_file, stages, tmp_path, monkeypatch):
    built = parse_recipe({"name": "t", "stages": stages}).stages
    assert columnar.select_part_columnar(scores_file, built, OutputLayout(str(tmp_path / "probe")), {}) is not None
    out = {}
    for switch in ("1", "0"):
        monkeypatch.setenv(columnar.ENV_SWITCH, switch)
        layout = OutputLayout(str(tmp_path / f"out{switch}"))
        os.makedirs(os.path.dirname(layout.decisions("/pool/00001.tar")), exist_ok=True)
        result = select_part(scores_file, built, layout, {b"beam_filter.recipe_hash": b"h"})
        with open(layout.decisions("/pool/00001.tar"), "rb") as f:
            out[switch] = (result, f.read())
    (fast, fast_bytes), (slow, slow_bytes) = out["1"], out["0"]
    assert fast_bytes == slow_bytes and fast.kept == slow.kept
    assert list(fast.counts.items()) == list(slow.counts.items())
    assert fast.counts["kept"] > 0 and sum(1 for k in fast.counts if k.endswith("below_threshold")) == len(stages)
