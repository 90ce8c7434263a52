"""The rank pass of a by-part select reads one column when the top-fraction stage comes first: its keys
equal those of the rows built and decided one by one (read errors are never alive)."""

from __future__ import annotations

import numpy as np

import beam_filter.recipe  # noqa: F401  (registers every stage)
from beam_filter import tables
from beam_filter.registry import build_stage
from beam_filter.rules.exact_rank import key_batch
from beam_filter.selection import advance_rows
from beam_filter.shard_work import part_rank_keys, read_part_rows


def _slow_keys(part, stage):
    rows = advance_rows(read_part_rows(part), [])
    get = stage.rank_spec().value
    return key_batch([get(r) for r in rows if r["reason"] is None])


def test_one_column_rank_keys_equal_the_row_path(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for i in range(300):
        err = "corrupt_image" if i % 17 == 0 else None
        score = None if err or i % 23 == 0 else float(rng.normal(0.25, 0.05))
        rows.append({"uid": f"{i:032x}", "shard": "s.tar", "key": f"{i:04d}", "read_error": err,
                     "warning": None, "clip_b32_score": score})
    path = str(tmp_path / "s.parquet")
    tables.write_rows(path, rows)
    stage = build_stage("clip_b32", "clip", {"model": "ViT-B-32", "pretrained": "openai", "fraction": 0.3})
    assert stage.rank_spec().columns                       # the one-column path is taken
    fast, slow = part_rank_keys(path, [stage], 0), _slow_keys(path, stage)
    assert fast.total == slow.total == 300 - len([r for r in rows if r["read_error"]])
    assert fast.n_nan == slow.n_nan > 0
    np.testing.assert_array_equal(fast.keys, slow.keys)
