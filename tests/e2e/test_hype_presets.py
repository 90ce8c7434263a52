"""The hype and hype_dfn presets offline with --test-models: every sample accounted for, the
composite keeps its fraction, and hype_dfn keeps exactly HYPE's selection united with the DFN uids."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq


def _rows(out):
    return [r for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]


def _models(tmp_path):
    from beam_filter.stages.clip import ClipStage
    from beam_filter.stages.hype import HypeStage

    models = str(tmp_path / "models")
    ClipStage.write_test_model(models)
    HypeStage.write_test_model(models)
    return models


def _cluster_files(tmp_path, models) -> list[str]:
    """c_IN's files at the tiny CLIP twin's width: random centroids, every other one a target."""
    dims = []
    for path in glob.glob(os.path.join(models, "clip_tiny", "*.json")):
        with open(path) as f:
            dims += [json.load(f).get("embed_dim")]
    dim = next(d for d in dims if d)
    rng = np.random.default_rng(5)
    np.save(tmp_path / "centroids.npy", rng.standard_normal((8, dim)).astype(np.float32))
    np.save(tmp_path / "targets.npy", np.arange(0, 8, 2, dtype=np.int64))
    return ["--set", f"imagenet_clusters.centroids={tmp_path}/centroids.npy",
            "--set", f"imagenet_clusters.targets={tmp_path}/targets.npy"]


def test_hype_preset_offline(clean_pool, tmp_path, run_cli, capsys):
    pool_dir, manifest = clean_pool
    models = _models(tmp_path)
    clusters = _cluster_files(tmp_path, models)
    # Without the image_based files, or without HYPE's weights: one line naming the parameter, before any work.
    assert run_cli("run", "--recipe", "hype", "--input", f"{pool_dir}/*.tar", "--output",
                   str(tmp_path / "none")) != 0
    assert "'imagenet_clusters': parameter 'centroids' is required" in capsys.readouterr().err
    assert run_cli("run", "--recipe", "hype", "--input", f"{pool_dir}/*.tar", "--output",
                   str(tmp_path / "none"), *clusters) != 0
    assert "set checkpoint=PATH" in capsys.readouterr().err
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "hype", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--test-models", models, *clusters) == 0
    rows = _rows(out)
    assert len(rows) == len({(r["shard"], r["key"]) for r in rows}) == manifest["samples"]
    scored = [r for r in rows if r["stage"] != "read"]
    assert scored and all(np.isfinite(r[c]) for r in scored for c in
                          ("hype_score", "hype_image_specificity_score", "hype_text_specificity_score"))
    assert all(r["hype_score"] <= 0 for r in scored)                     # -d_L
    # c_IN: every row reaching the image_based term has it, 0.0 or 1.0, and some of each here.
    c_in = [r["imagenet_clusters_pass"] for r in scored if r.get("imagenet_clusters_pass") is not None]
    assert c_in and set(c_in) == {0.0, 1.0}
    kept = [r for r in rows if r["kept"]]
    assert {r["reason"] for r in rows if r["stage"] == "hype_score"} == {"hype_score_below_threshold"}
    # DataComp's rank-n rule keeps the top 30% of the alive rows (ties at the cut kept too).
    assert len(kept) >= int(0.3 * len(scored)) and len(kept) <= int(0.3 * len(scored)) + 2
    with open(os.path.join(out, "thresholds", "hype_score.json")) as f:
        assert json.load(f)["threshold"] is not None


def _uid_records(uids) -> np.ndarray:
    """DataComp subset format: sorted (u8, u8) pairs of the hex uid."""
    pairs = sorted((int(u[:16], 16), int(u[16:32], 16)) for u in uids)
    return np.array(pairs, dtype=np.dtype("u8,u8"))


def test_hype_dfn_preset_is_the_union(clean_pool, tmp_path, run_cli):
    pool_dir, _ = clean_pool
    models = _models(tmp_path)
    clusters = _cluster_files(tmp_path, models)
    hype_out = str(tmp_path / "hype")
    assert run_cli("run", "--recipe", "hype", "--input", f"{pool_dir}/*.tar", "--output", hype_out,
                   "--test-models", models, *clusters) == 0
    rows = _rows(hype_out)
    hype_kept = {r["uid"] for r in rows if r["kept"]}
    candidates = sorted(r["uid"] for r in rows if r["stage"] != "read" and not r["kept"])
    dfn = set(candidates[::3])
    dfn_path = str(tmp_path / "dfn.npy")
    np.save(dfn_path, _uid_records(dfn))
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "hype_dfn", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--test-models", models, "--set", f"hype_or_dfn.dfn.path={dfn_path}", *clusters) == 0
    got = {r["uid"] for r in _rows(out) if r["kept"]}
    assert dfn and got == hype_kept | dfn
