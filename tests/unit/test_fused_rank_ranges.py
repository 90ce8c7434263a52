"""fused_rank's by-part summary: per-part [min, max] of the alive rows, merged in any order, equal the
general graph's combine over every alive row (transforms/thresholds._RangesFn); the rank keys a part
sends are the fused scores FusedRankThreshold ranks, under the same ranges."""

from __future__ import annotations

import itertools
import math

import numpy as np

import beam_filter.recipe  # noqa: F401  (registers every stage)
from beam_filter import tables
from beam_filter.registry import build_stage
from beam_filter.rules.exact_rank import key_batch
from beam_filter.rules.fused_score import FusedInfo, fused_value
from beam_filter.selection import advance_rows, is_summary_staged
from beam_filter.shard_work import SUMMARY_SIDE, part_summary, part_summary_keys, read_part_rows
from beam_filter.transforms.thresholds import _RangesFn

WEIGHTS = {"a": 0.5, "b|b_alt": 0.3, "c": 0.2}


def _stage(**extra):
    return build_stage("fused", "fused_rank", {"weights": WEIGHTS, **(extra or {"fraction": 0.3})})


def _graph_ranges(stage, rows):
    fn = _RangesFn(len(stage.weights))
    acc = fn.create_accumulator()
    for r in rows:
        acc = fn.add_input(acc, stage.values(r))
    return fn.extract_output(acc)


def _rows(rng, n, start=0):
    out = []
    for i in range(start, start + n):
        row = {"a": float(rng.normal()) if i % 7 else None,
               "c": [math.nan, True, "x", 3][i % 4] if i % 11 == 0 else float(rng.integers(-3, 3))}
        row["b" if i % 2 else "b_alt"] = float(rng.uniform(-1, 1))
        out.append(row)
    return out


def test_merged_part_ranges_equal_the_general_graph_combine_in_any_order():
    stage = _stage()
    spec = stage.summary_spec()
    assert is_summary_staged(stage) and stage.rank_spec() is None
    rng = np.random.default_rng(3)
    parts = [_rows(rng, 40), [], _rows(rng, 1, 40), _rows(rng, 25, 41), [{"a": None, "c": math.nan}]]
    whole = _graph_ranges(stage, [r for p in parts for r in p])
    summaries = [spec.summarize(p) for p in parts]
    for order in itertools.permutations(summaries):
        assert spec.combine(list(order)) == whole
    # pairwise, as a CombineFn's accumulator folds them (CombineSummaries)
    acc = spec.combine([])
    for s in reversed(summaries):
        acc = spec.combine([acc, s])
    assert acc == whole
    assert whole[0][0] < whole[0][1] and whole[2] == [-3.0, 3.0]


def test_empty_and_all_nan_columns():
    stage = _stage()
    spec = stage.summary_spec()
    assert spec.combine([]) == [[None, None]] * 3
    ranges = spec.combine([spec.summarize([{"a": 1.0, "b": None, "c": 2.0}]), spec.summarize([])])
    assert ranges == [[1.0, 1.0], [None, None], [2.0, 2.0]]
    assert math.isnan(spec.value({"a": 1.0, "b": 0.5, "c": 2.0}, ranges))      # no number in b: NaN
    info = spec.finish(ranges, None)
    assert isinstance(info, FusedInfo) and stage.reason({"a": 1.0, "b": 0.5, "c": 2.0}, info) == "fused_below_threshold"


def test_fixed_threshold_finishes_without_a_rank():
    stage = _stage(threshold=0.4)
    spec = stage.summary_spec()
    assert spec.fraction is None
    ranges = [[0.0, 2.0], [0.0, 1.0], [0.0, 1.0]]
    info = spec.finish(ranges, None)
    assert info == FusedInfo(ranges, 0.4)
    assert stage.reason({"a": 2.0, "b": 0.0, "c": 0.0}, info) is None                  # 0.5 >= 0.4
    assert stage.reason({"a": 1.0, "b": 0.0, "c": 0.0}, info) == "fused_below_threshold"   # 0.25


def test_part_summary_and_keys_read_the_rows_alive_at_the_stage(tmp_path):
    """On a real scores file: rows a rule drops before the stage and read errors leave the summary
    and the keys; the keys are the fused values FusedRankThreshold would rank."""
    rng = np.random.default_rng(9)
    rows = []
    for i, r in enumerate(_rows(rng, 120)):
        err = "corrupt_image" if i % 19 == 4 else None
        rows.append({"uid": f"{i:032x}", "shard": "s.tar", "key": f"{i:04d}", "read_error": err,
                     "warning": None, "caption": "two words" if i % 5 else "one", **r,
                     "c": None if isinstance(r["c"], (str, bool)) else r["c"]})
    path = str(tmp_path / "s.parquet")
    tables.write_rows(path, rows)
    rule = build_stage("caption_length", "caption_length", {"min_words": 2})
    stage = _stage()
    stages = [rule, stage]
    alive = [r for r in advance_rows(read_part_rows(path), [rule]) if r["reason"] is None]
    assert 60 < len(alive) < 100
    summary = part_summary(path, stages, 1)
    assert summary == _graph_ranges(stage, alive)
    assert summary != _graph_ranges(stage, read_part_rows(path))           # the dropped rows changed them
    keys = part_summary_keys(path, stages, 1, infos={SUMMARY_SIDE: summary})
    want = key_batch([fused_value(stage.values(r), summary, stage.weights) for r in alive])
    assert keys.total == want.total == len(alive) and keys.n_nan == want.n_nan > 0
    np.testing.assert_array_equal(keys.keys, want.keys)


def test_columnar_twins_equal_the_row_path(tmp_path):
    """On a scores file with ties, -0.0 and 0.0, NaN and null scores and read errors: the columnar
    summary, fused values and reasons are the row path's, bit for bit (decisions bytes compared in
    tests/e2e/test_select_fused_rank_parts.py); a fallback column or a bool column makes them decline."""
    from beam_filter.columnar import alive_columnar, load_part
    from beam_filter.rules.fused_score import as_number

    rng = np.random.default_rng(4)
    rows = []
    for i in range(200):
        err = "corrupt_image" if i % 23 == 1 else None
        a = [0.0, -0.0, 0.5, math.nan, None, 1.0][i % 6]
        rows.append({"uid": f"{i:032x}", "shard": "s.tar", "key": f"{i:04d}", "read_error": err, "warning": None,
                     "caption": "two words" if i % 7 else "one", "a": a, "b": float(rng.integers(0, 4)),
                     "c": None if i % 11 == 0 else float(rng.integers(-2, 3)), "flag": bool(i % 2)})
    path = str(tmp_path / "s.parquet")
    tables.write_rows(path, rows)
    rule = build_stage("caption_length", "caption_length", {"min_words": 2})
    stage = build_stage("fused", "fused_rank", {"weights": {"a": 0.2, "b": 0.5, "c": 0.3}, "fraction": 0.5})
    stages = [rule, stage]
    spec = stage.summary_spec()
    view, alive = alive_columnar(path, stages, 1)
    slow = [r for r in advance_rows(read_part_rows(path), [rule]) if r["reason"] is None]
    assert int(alive.sum()) == len(slow) > 100
    ranges = spec.summarize_array(view, alive)
    assert ranges == spec.summarize(slow)
    # the first alive zero is row 6's 0.0, then row 13's -0.0: the row path keeps the first
    assert ranges[0] == [0.0, 1.0] and math.copysign(1, ranges[0][0]) == math.copysign(1, spec.summarize(slow)[0][0]) == 1
    fused = spec.value_array(view, ranges)
    want = np.array([as_number(spec.value(r, ranges)) for r in read_part_rows(path)])
    np.testing.assert_array_equal(fused, want)                  # NaN where NaN, same bits elsewhere
    assert np.isnan(want).sum() > 10 and len(set(want[~np.isnan(want)])) < 0.7 * (~np.isnan(want)).sum()
    info = FusedInfo(ranges, float(np.nanmedian(want)))
    got = stage.reason_array(view, np.ones(view.n, bool), info)
    assert list(got) == [stage.reason(r, info) for r in read_part_rows(path)]
    assert stage.reason_array(view, alive, FusedInfo(ranges, None)).tolist() == ["fused_below_threshold"] * view.n
    # fallbacks and non-numbers: the part builds rows
    for weights in ({"zz|a": 0.5, "c": 0.5}, {"flag": 0.5, "c": 0.5}):
        other = build_stage("f2", "fused_rank", {"weights": weights, "fraction": 0.5})
        assert other.summary_spec().summarize_array(load_part(path), alive) is None
        assert other.reason_array(load_part(path), alive, info) is None


def test_metadata_part_decided_on_columns_writes_the_row_paths_bytes(tmp_path, monkeypatch):
    """A DataComp metadata part (NaN, null and tied scores, read errors) after a caption rule: the
    summary, the rank keys and the decisions file are the same with the columnar path on and off."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_filter import columnar
    from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata
    from beam_filter.layout import OutputLayout
    from beam_filter.rules.thresholds import rank_n_info
    from beam_filter.shard_work import select_part

    meta = tmp_path / "meta"
    write_synthetic_metadata(str(meta), 600, seed=3, parts=1)
    parquet, npz = str(meta / "00000000.parquet"), str(meta / "00000000.npz")
    t = pq.read_table(parquet)
    b32 = t.column("clip_b32_similarity_score").to_pylist()
    l14 = t.column("clip_l14_similarity_score").to_pylist()
    for i in range(600):
        if i % 37 == 1:
            b32[i] = None
        elif i % 37 == 2:
            l14[i] = float("nan")
    b32[50:70] = [0.3] * 20
    l14[50:70] = [0.3] * 20                                  # twenty rows tie on the fused score
    t = t.set_column(t.column_names.index("clip_b32_similarity_score"), "clip_b32_similarity_score",
                     pa.array(b32, t.schema.field("clip_b32_similarity_score").type))
    t = t.set_column(t.column_names.index("clip_l14_similarity_score"), "clip_l14_similarity_score",
                     pa.array(l14, t.schema.field("clip_l14_similarity_score").type))
    t = t.append_column("read_error", pa.array([("corrupt_image" if i % 41 == 0 else None) for i in range(600)]))
    pq.write_table(t, parquet)
    part = (parquet, npz)
    stages = [build_stage("caption_length", "caption_length", {"min_words": 2}),
              build_stage("fused", "fused_rank", {"weights": {"clip_b32_similarity_score": 0.4,
                                                              "clip_l14_similarity_score": 0.6},
                                                  "fraction": 0.3})]
    spec = stages[1].summary_spec()
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv(columnar.ENV_SWITCH, switch)
        assert (columnar.alive_columnar(part, stages, 1) is not None) == (switch == "1")
        summary = part_summary(part, stages, 1)
        keys = part_summary_keys(part, stages, 1, infos={SUMMARY_SIDE: summary})
        alive = [r for r in advance_rows(read_part_rows(part), stages[:1]) if r["reason"] is None]
        rank = rank_n_info([spec.value(r, summary) for r in alive], 0.3)
        assert rank.n_equal >= 1 and rank.n_nan > 0
        info = spec.finish(summary, rank)
        layout = OutputLayout(str(tmp_path / f"out{switch}"))
        os.makedirs(os.path.dirname(layout.decisions(parquet)), exist_ok=True)
        select_part(part, stages, layout, {b"beam_filter.recipe_hash": b"h"}, (), {"fused": info})
        with open(layout.decisions(parquet), "rb") as f:
            out.append((summary, keys.total, keys.n_nan, keys.keys.tobytes(), info, f.read()))
    assert out[0] == out[1]
    kept = pq.read_table(layout.decisions(parquet)).column("kept").to_pylist()
    assert sum(kept) == out[0][4].rank.kept > 0
