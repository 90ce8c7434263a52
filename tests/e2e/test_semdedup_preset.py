"""The semdedup preset end to end with the tiny CLIP: cluster ids on every row it saw, drops explained."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq


def test_semdedup_preset_records_clusters_and_reasons(clean_pool, tmp_path, run_cli):
    from beam_filter.stages.clip import ClipStage

    pool_dir, _ = clean_pool
    models = str(tmp_path / "models")
    ClipStage.write_test_model(models)
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "semdedup", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--test-models", models, "--set", "semdedup.n_clusters=4", "--set", "semdedup.eps=0.2") == 0
    rows = [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]
    seen = [r for r in rows if r["stage"] in (None, "semdedup")]
    assert seen and all(isinstance(r["semdedup_cluster"], int) and 0 <= r["semdedup_cluster"] < 4 for r in seen)
    assert all(r["semdedup_cluster"] is None for r in rows if r["stage"] == "read")
    dropped = [r for r in seen if r["stage"] == "semdedup"]
    by_uid = {r["uid"]: r for r in rows}
    for r in dropped:       # a semantic duplicate points at a row of the same cluster
        other = by_uid[r["reason"].split(":", 1)[1]]
        assert other["semdedup_cluster"] == r["semdedup_cluster"]
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "semdedup_cluster" in html
