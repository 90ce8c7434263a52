"""The dbp preset end to end: offline with --test-models (every sample accounted for, the budget kept
exactly, per-cluster statistics in the report) and `select --metadata` on DataComp's l14_img."""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow.parquet as pq


def _rows(out):
    return [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]


def test_dbp_preset_offline_accounts_for_every_sample(clean_pool, tmp_path, run_cli):
    from beam_filter.stages.clip import ClipStage

    pool_dir, manifest = clean_pool
    models = str(tmp_path / "models")
    ClipStage.write_test_model(models)
    out, again = str(tmp_path / "out"), str(tmp_path / "again")
    for o in (out, again):
        assert run_cli("run", "--recipe", "dbp", "--input", f"{pool_dir}/*.tar", "--output", o,
                       "--test-models", models, "--set", "semdedup.n_clusters=4", "--set", "semdedup.eps=1e-6",
                       "--set", "dbp.n_clusters=5", "--set", "dbp.ratio=0.5", "--set", "dbp.niter=5") == 0
    for name in ("uids.npy", *(os.path.relpath(f, out) for f in glob.glob(os.path.join(out, "decisions", "*")))):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
            assert a.read() == b.read(), name            # same input and recipe: the same bytes
    rows = _rows(out)
    assert len(rows) == len({(r["shard"], r["key"]) for r in rows}) == manifest["samples"]
    reached = [r for r in rows if r["stage"] in (None, "dbp")]
    assert len(reached) > 50 and sum(r["kept"] for r in reached) == int(0.5 * len(reached))
    assert {r["reason"] for r in rows if r["stage"] == "dbp"} == {"dbp_pruned"}
    alloc = {}
    for r in reached:
        alloc.setdefault(r["dbp_cluster"], r["dbp_allocation"])
        assert r["dbp_allocation"] == alloc[r["dbp_cluster"]] and r["dbp_complexity"] > 0
    for c, a in alloc.items():
        assert sum(r["kept"] for r in reached if r["dbp_cluster"] == c) == a
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert 'class="cluster-stats" data-column="dbp_cluster"' in html and "complexity" in html
    assert html.count('class="cluster-stat"') == len(alloc)


def test_dbp_preset_on_datacomp_metadata(datacomp_meta, run_cli, tmp_path):
    out = tmp_path / "out"
    assert run_cli("select", "--metadata", os.path.join(datacomp_meta.dir, "metadata"), "--recipe", "dbp",
                   "--output", out, "--set", "semdedup.embedding=l14_img", "--set", "dbp.embedding=l14_img",
                   "--set", "semdedup.n_clusters=16", "--set", "dbp.n_clusters=10", "--set", "dbp.niter=5") == 0
    rows = _rows(str(out))
    assert len(rows) == datacomp_meta.rows
    reached = [r for r in rows if r["stage"] in (None, "dbp")]
    kept = np.load(out / "uids.npy")
    assert len(kept) == int(0.8 * len(reached)) == sum(r["kept"] for r in rows)
