"""build-centroids as a Beam graph (transforms/build_centroids.py) equals the one-machine build and
DataComp's image_based_clustering.py on the same sample, and its assignment pass gives each row
its nearest centroid. The reference is written here: DataComp's caption filter (the conftest's
DataCompReference, fastText called directly), the documented sampling rule (blake2b of
"<salt>/<uid>" below the ratio) and faiss k-means set up as DataComp sets it up."""

from __future__ import annotations

import glob
import hashlib
import os

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_filter import build_centroids as bc
from beam_filter.cluster.centroids import load_centroids_file

K = 12
RATIO = 0.55


def _sampled(uid: str, ratio: float, salt: str = "build-centroids") -> bool:
    h = hashlib.blake2b(f"{salt}/{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / float(1 << 64) < ratio


def _datacomp_train_kmeans(x: np.ndarray, k: int) -> np.ndarray:
    d = x.shape[1]
    cluster = faiss.Clustering(d, k)
    cluster.niter = 20
    cluster.seed = 0
    cluster.max_points_per_centroid = 10000000
    cluster.train(np.ascontiguousarray(x, dtype=np.float32), faiss.IndexFlatL2(d))
    return faiss.vector_float_to_array(cluster.centroids).reshape(k, d)


def _run_graph(parts, output, sampling, assign_dir=None, k=K):
    """The BuildCentroids PTransform in a real Beam pipeline on the local runner."""
    from beam_filter.pipeline import make_pipeline, pipeline_options
    from beam_filter.transforms.build_centroids import BuildCentroids

    p = make_pipeline(pipeline_options([]))
    _ = p | BuildCentroids(parts, output, sampling, num_clusters=k, seed=0, niter=20, assign_dir=assign_dir)
    p.run().wait_until_finish()


@pytest.fixture(scope="module")
def built(datacomp_meta, tmp_path_factory):
    d = tmp_path_factory.mktemp("build")
    meta = os.path.join(datacomp_meta.dir, "metadata")
    parts = bc.list_parts(meta)
    assert len(parts) == 3
    sampling = bc.Sampling(sample_ratio=RATIO)
    _run_graph(parts, str(d / "distributed.pt"), sampling, assign_dir=str(d / "assign"))
    one = bc.build_centroids(str(d / "one.npy"), metadata_dir=meta, num_clusters=K, sample_ratio=RATIO)
    return d, meta, one


def test_distributed_equals_one_machine_and_datacomp(built, datacomp_meta):
    d, _, one = built
    ref = datacomp_meta.ref
    mask = ref.caption_prefilter() & np.array([_sampled(u, RATIO) for u in ref.df.uid])
    assert 0 < mask.sum() < len(mask) and one["embeddings"] == int(mask.sum())
    want = _datacomp_train_kmeans(ref.feats["l14_img"][mask].astype(np.float32), K)
    got = load_centroids_file(str(d / "distributed.pt"))
    single = load_centroids_file(str(d / "one.npy"))
    assert got.shape == (K, 768) and got.dtype == np.float32
    np.testing.assert_allclose(got, single, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_assignment_pass_gives_each_row_its_nearest_centroid(built, datacomp_meta):
    d, _, _ = built
    ref = datacomp_meta.ref
    cents = load_centroids_file(str(d / "distributed.pt"))
    files = sorted(glob.glob(str(d / "assign" / "*.parquet")))
    assert [os.path.basename(f) for f in files] == ["00000000.parquet", "00000001.parquet", "00000002.parquet"]
    t = {k: sum((pq.read_table(f).column(k).to_pylist() for f in files), []) for k in bc.ASSIGN_COLUMNS}
    assert t["uid"] == list(ref.df.uid)                          # every row, in part then row order
    scores = ref.feats["l14_img"].astype(np.float32) @ cents.T   # DataComp's rule: argmax inner product
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4                     # away from float32 near-ties
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(np.array(t["centroid"])[clear], np.argmax(scores, axis=1)[clear])
    np.testing.assert_array_equal(np.array(t["caption_ok"]), ref.caption_prefilter())


def test_another_salt_draws_another_sample(built, tmp_path):
    _, meta, one = built
    parts = bc.list_parts(meta)
    s = bc.Sampling(sample_ratio=RATIO, sample_salt="other")
    emb = bc.stack_samples((p.index, bc.part_sample(p, s)) for p in parts)
    same = bc.stack_samples((p.index, bc.part_sample(p, bc.Sampling(sample_ratio=RATIO))) for p in parts)
    assert len(same) == one["embeddings"]
    assert len(emb) != len(same) or not np.array_equal(emb, same)
    # parts sampled in any order stack in part order: the graph's gather order does not matter
    shuffled = [(p.index, bc.part_sample(p, s)) for p in reversed(parts)]
    np.testing.assert_array_equal(bc.stack_samples(shuffled), emb)


def test_scores_input_distributed_equals_one_machine(tmp_path):
    """--scores: a score run's parts (scores/*.parquet + embeddings/*.npz, written by the writer a
    score run uses), caption filter off, every row: both builds equal DataComp's faiss call on
    the embeddings in part then row order."""
    from beam_filter import tables
    from beam_filter.layout import OutputLayout

    rng = np.random.default_rng(7)
    k = 4
    layout = OutputLayout(str(tmp_path / "scores_run"))
    col = "clip_l14_image_embedding"
    want = []
    for s in range(3):
        shard = f"/pool/{s:08d}.tar"
        emb = rng.normal(size=(80, 32)).astype(np.float32)
        rows = [{"uid": f"{s}-{i:03d}", "shard": shard, "key": f"{i:03d}", "caption": "a photo", col: emb[i]}
                for i in range(80)]
        tables.write_rows(layout.scores(shard), rows, embeddings_path=layout.embeddings(shard))
        want.append(emb.astype(np.float16).astype(np.float32))     # score runs store embeddings fp16
    parts = bc.list_parts(scores_dir=str(tmp_path / "scores_run"))
    assert [p.kind for p in parts] == ["scores"] * 3
    sampling = bc.Sampling(key=col, caption_filtering=False)
    _run_graph(parts, str(tmp_path / "d.npy"), sampling, k=k)
    one = bc.build_centroids(str(tmp_path / "o.npy"), scores_dir=str(tmp_path / "scores_run"), key=col,
                             num_clusters=k, caption_filtering=False)
    assert one["embeddings"] == 240
    ref = _datacomp_train_kmeans(np.vstack(want), k)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), np.load(tmp_path / "o.npy"), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), ref, rtol=0, atol=1e-5)
