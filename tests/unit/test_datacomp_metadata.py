"""DataComp metadata as rows (datacomp_metadata), centroid search and the stages reading metadata columns.

On synthetic DataComp-format metadata (the ``datacomp_meta`` fixture); every baseline against an
independent implementation: tests/beam/test_datacomp_baselines.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from beam_filter.cluster.centroids import nearest_centroids, target_centroids
from beam_filter.datacomp_metadata import iter_metadata_rows, list_metadata_files
from beam_filter.devtools.synthetic_metadata import write_synthetic_metadata
from beam_filter.errors import UserError
from beam_filter.recipe import load_recipe, parse_recipe
from beam_filter.transforms.metadata import ReadDataCompMetadata


def test_target_centroids_are_unique_nearest(datacomp_meta):
    ref, cents, targets = datacomp_meta.ref, datacomp_meta.centroids, datacomp_meta.targets
    imagenet = ref.feats["l14_img"][:50].astype(np.float32)
    assert np.array_equal(target_centroids(cents, imagenet),
                          np.unique(np.argmax(imagenet @ cents.T, axis=1)))
    assert 0 < len(targets) < len(cents)
    assert np.array_equal(nearest_centroids(imagenet, cents), np.argmax(imagenet @ cents.T, axis=1))


def test_metadata_rows_follow_the_contract(datacomp_meta):
    d, ref = datacomp_meta.dir, datacomp_meta.ref
    parts = list_metadata_files(os.path.join(d, "metadata"))
    assert [os.path.basename(p) for p, _ in parts] == ["00000000.parquet", "00000001.parquet", "00000002.parquet"]
    rows = [r for p, _ in parts for r in iter_metadata_rows(p, batch_rows=333)]
    assert [r["uid"] for r in rows] == list(ref.df.uid)
    r = rows[5]
    src = ref.df.iloc[5]
    assert (r["caption"], r["width"], r["height"], r["sha256"]) == (
        src.text, src.original_width, src.original_height, src.sha256)
    assert r["clip_l14_similarity_score"] == src.clip_l14_similarity_score
    assert r["caption_words"] == len(src.text.split()) and r["shard"] == parts[0][0]
    for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
        assert r[key].dtype == np.float32 and r[key].ndim == 1
    assert np.array_equal(np.stack([x["l14_img"] for x in rows]), ref.feats["l14_img"].astype(np.float32))
    # scores tie (realistic rounding), so the rank-n rule's tie handling matters here
    assert ref.df.clip_l14_similarity_score.duplicated().sum() > datacomp_meta.rows // 2


def test_metadata_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        list_metadata_files(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no \\*.parquet"):
        ReadDataCompMetadata(str(tmp_path / "empty"))
    paths = write_synthetic_metadata(str(tmp_path / "m"), 30, seed=1, parts=1)
    stem = paths[0][:-8]
    feats = dict(np.load(stem + ".npz"))
    np.savez(stem + ".npz", **{k: v[:-1] for k, v in feats.items()})
    with pytest.raises(UserError, match="29 rows but .* has 30"):
        list(iter_metadata_rows(paths[0]))
    np.savez(stem + ".npz", l14_img=np.array([object()] * 30, dtype=object))
    with pytest.raises(UserError, match="objects"):
        list(iter_metadata_rows(paths[0], embeddings=["l14_img"]))
    os.remove(stem + ".npz")
    assert "l14_img" not in next(iter_metadata_rows(paths[0]))   # parquet-only download


def test_embedding_keys_for_recipes(datacomp_meta):
    from beam_filter.datacomp_metadata import embedding_keys_for

    d = datacomp_meta.dir
    assert embedding_keys_for(load_recipe("datacomp_clip_l14_30pct").stages) == []
    assert embedding_keys_for(load_recipe("image_based", datacomp_meta.overrides).stages) == ["l14_img"]
    raw = {"name": "x", "stages": [{"any_of": {"stages": [{"laion2b": {}}, {"datacomp_basic": {}}]}},
                                   {"image_based": {"centroids": "c", "targets": "t", "embedding": "b32_img"}}]}
    assert embedding_keys_for(parse_recipe(raw).stages) == ["b32_img"]
    part = list_metadata_files(os.path.join(d, "metadata"))[0][0]
    row = next(iter_metadata_rows(part, embeddings=[]))
    assert not any(k in row for k in ("b32_img", "l14_img"))


def test_stages_prefer_the_clip_stage_columns_over_metadata(datacomp_meta):
    from beam_filter.registry import build_stage
    from beam_filter.rules.datacomp import laion2b_reason

    d, cents, targets = datacomp_meta.dir, datacomp_meta.centroids, datacomp_meta.targets
    ib = build_stage("image_based", "image_based", {"centroids": f"{d}/centroids.npy",
                                                    "targets": f"{d}/targets.npy", "clip_stage": "clip_l14"})
    own, meta_emb = np.ones(768, np.float32), np.zeros(768, np.float32)
    assert ib.embedding_of({"clip_l14_image_embedding": own, "l14_img": meta_emb}) is not None
    assert np.array_equal(ib.embedding_of({"clip_l14_image_embedding": own, "l14_img": meta_emb}), own)
    assert np.array_equal(ib.embedding_of({"l14_img": meta_emb}), meta_emb)
    with pytest.raises(UserError, match="no image embedding"):
        ib.embedding_of({"b32_img": meta_emb})
    english = {"uid": "a", "caption": "a photo of a dog playing in the park", "lang": "en"}
    target = int(targets[0])
    hit = cents[target] / np.linalg.norm(cents[target])
    assert ib.batch_verdicts([{**english, "l14_img": hit}]) == []
    with pytest.raises(UserError, match="do not match centroids"):
        ib.batch_verdicts([{**english, "l14_img": np.ones(512, np.float32)}])
    assert ib.batch_verdicts([{**english, "caption": "dog\ncat", "l14_img": hit}]) == []   # 3 fastText tokens
    assert ib.batch_verdicts([{**english, "caption": "doggy", "l14_img": hit}])[0][1].reason == "caption_too_short"
    lb = build_stage("laion2b", "laion2b", {"clip_stage": "clip_b32"})
    row = {"caption": "a dog on a beach", "lang_cld3": "en", "clip_b32_similarity_score": 0.1}
    assert lb.reason(row) == "clip_score_below_threshold"
    assert lb.reason({**row, "clip_b32_score": 0.28}) is None
    assert lb.reason({**row, "clip_b32_score": 0.3, "lang_cld3": "de"}) == "not_english"
    assert laion2b_reason(float("nan"), "en") == "clip_score_below_threshold"


def test_target_cluster_verdicts_pure():
    from beam_filter.cluster.centroids import CentroidIndex, TargetClusters, target_cluster_verdicts
    from beam_filter.identity import row_token
    from beam_filter.records import Verdict

    cents = np.eye(3, dtype=np.float32)
    clusters = TargetClusters(CentroidIndex(cents), np.array([0, 2]))
    emb = np.array([[1, 0, 0], [0, 1, 0], [0.1, 0, 0.9]], np.float32)
    assert clusters.hits(emb).tolist() == [True, False, True]
    with pytest.raises(UserError, match="integer centroid ids"):
        TargetClusters(CentroidIndex(cents), np.array([0.0]), source="t.npy")
    rows = [{"uid": "a", "emb": np.array([1, 0, 0], np.float32), "ok": True},
            {"uid": "b", "emb": np.array([0, 1, 0], np.float32), "ok": True},
            {"uid": "c", "ok": False}]                       # no embedding: never asked for one

    def pre(r):
        return None if r["ok"] else "caption_too_short"

    loads = []

    def load():
        loads.append(1)
        return clusters

    out = target_cluster_verdicts(rows, pre, lambda r: r["emb"], load)
    assert out == [(row_token(rows[2]), Verdict(reason="caption_too_short")),
                   (row_token(rows[1]), Verdict(reason="not_in_target_clusters"))]
    assert target_cluster_verdicts(rows[2:], pre, lambda r: r["emb"], load) == out[:1]
    assert loads == [1]                                     # no row searched: nothing loaded
