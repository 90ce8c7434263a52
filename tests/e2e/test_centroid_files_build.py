"""`beam-filter build-centroids` reproduces DataComp's image_based_clustering.py: faiss k-means
(L2 index, niter 20, seed 0, max_points_per_centroid 1e7) on the caption-filtered l14_img
embeddings in part order -- the reference written here with faiss and DataCompReference's
caption filter -- and writes DataComp's .pt format, which image_based then reads."""

from __future__ import annotations

import os

import faiss
import numpy as np
import pytest
import torch

from beam_filter.cluster.centroids import load_centroids_file


def _datacomp_train_kmeans(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    d = embeddings.shape[1]
    cluster = faiss.Clustering(d, k)
    cluster.niter = 20
    cluster.seed = seed
    cluster.max_points_per_centroid = 10000000
    cluster.train(embeddings, faiss.IndexFlatL2(d))
    return faiss.vector_float_to_array(cluster.centroids).reshape(k, d)


@pytest.mark.parametrize("ext", [".pt", ".npy"])
def test_build_centroids_matches_datacomps_clustering(ext, datacomp_meta, run_cli, tmp_path):
    ref = datacomp_meta.ref
    out = str(tmp_path / f"centroids{ext}")
    assert run_cli("build-centroids", "--metadata", os.path.join(datacomp_meta.dir, "metadata"),
                   "--num-clusters", "16", "--output", out) == 0
    want = _datacomp_train_kmeans(ref.feats["l14_img"][ref.caption_prefilter()].astype(np.float32), 16)
    got = load_centroids_file(out)
    assert got.shape == (16, 768) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    if ext == ".pt":        # DataComp's format: torch.save of a numpy array (read as DataComp does)
        loaded = torch.load(out, weights_only=False)
        assert isinstance(loaded, np.ndarray) and np.array_equal(loaded, got)
    assert run_cli("build-centroids", "--metadata", os.path.join(datacomp_meta.dir, "metadata"),
                   "--num-clusters", "16", "--output", out) == 2          # never replaces a file
