"""MLM-Filter top-fraction selection end to end: rank-n with the seeded tie-break, through the CLI."""

from __future__ import annotations

import glob
import json
import os

import pyarrow.parquet as pq


def test_mlm_fraction_keeps_the_rank_n_share(tmp_path, run_cli, write_small_pool):
    from beam_filter.rules.thresholds import tiebreak_keep_mask
    from beam_filter.stages.mlm import MLMFilter

    pool = str(tmp_path / "pool")
    write_small_pool(pool, n=16)
    models = str(tmp_path / "models")
    MLMFilter.write_test_model(models)
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "mlm_filter_su85", "--input", f"{pool}/*.tar", "--output", out,
                   "--test-models", models, "--set", "mlm.threshold=null", "--set", "mlm.fraction=0.5",
                   "--set", "mlm.seed=7") == 0
    rows = [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]
    alive = [r for r in rows if not r["read_error"]]
    col = "mlm_semantic_understanding_score"
    values = [float("nan") if r[col] is None else r[col] for r in alive]
    want = tiebreak_keep_mask(values, [r["uid"] for r in alive], 0.5, 7)
    assert [r["kept"] for r in alive] == [bool(k) for k in want]
    info = json.load(open(os.path.join(out, "thresholds", "mlm.json")))
    assert info["fraction"] == 0.5 and info["N"] == len(alive)
