"""Resumable scoring with a model stage: a rerun over the same output scores no shard again."""

from __future__ import annotations

import glob
import os


def test_rerun_with_resume_skips_every_scored_shard(tmp_path, run_cli, write_small_pool):
    from beam_filter.stages.mlm import MLMFilter

    pool = str(tmp_path / "pool")
    write_small_pool(pool)
    models = str(tmp_path / "models")
    MLMFilter.write_test_model(models)
    out = str(tmp_path / "out")
    args = ["run", "--recipe", "mlm_filter_su85", "--input", f"{pool}/*.tar", "--output", out,
            "--test-models", models]
    assert run_cli(*args) == 0
    scores = sorted(glob.glob(os.path.join(out, "scores", "*.parquet")))
    assert scores
    stamp = {f: os.stat(f).st_mtime_ns for f in scores}
    decisions = {f: open(f, "rb").read() for f in glob.glob(os.path.join(out, "decisions", "*.parquet"))}

    assert run_cli(*args, "--resume") == 0
    assert {f: os.stat(f).st_mtime_ns for f in scores} == stamp          # nothing re-scored
    assert {f: open(f, "rb").read() for f in decisions} == decisions   # same decisions from stored scores

    # a new threshold reuses the scores too (thresholds are not part of the score hash) ...
    assert run_cli(*args, "--resume", "--set", "mlm.threshold=10") == 0
    assert {f: os.stat(f).st_mtime_ns for f in scores} == stamp
    # ... while another model invalidates them
    assert run_cli(*args, "--resume", "--set", "mlm.max_new_tokens=2") == 0
    assert {f: os.stat(f).st_mtime_ns for f in scores} != stamp
