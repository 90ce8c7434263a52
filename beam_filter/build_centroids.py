"""``beam-filter build-centroids``: the pool centroids of DataComp's image_based baseline.

Reproduces DataComp's ``baselines/image_based_clustering.py``: the L/14 image embeddings
(``l14_img``) of every metadata part, in sorted part order and row order, keeping the rows
that pass the caption filter (fastText ``en``, more than 1 fastText token, more than 5
characters: ``rules.datacomp.image_based_caption_reason``); then faiss k-means with an L2
index, ``niter`` 20, ``seed`` 0 and ``max_points_per_centroid`` 1e7 (so faiss trains on
every point instead of subsampling), 100,000 clusters by default. The output is a
``(k, d)`` float32 array: ``.pt`` (``torch.save`` of the numpy array, pickle protocol 4,
as DataComp ships ``medium_centroids_l14.pt``) or ``.npy``; the image_based stage reads either.

Input: a DataComp metadata directory (``--metadata``: parquet + npz), or the output of a
``score`` run whose recipe has an L/14 clip stage (``--scores``, embedding
``--embedding clip_l14_image_embedding``; the caption filter reads the rows' captions).

Differences, said here and in docs/datacomp_files.md: DataComp's ``--sample_ratio``
draws rows with ``np.random.choice`` (with replacement, per worker process); here
``--sample-ratio`` keeps a row when its uid hash is below the ratio (sampling.uid_unit),
which is reproducible on any number of workers. DataComp trains on GPUs (faiss GPU
index); this runs faiss on the CPU of one machine: the embeddings must fit in its memory
(medium pool, caption-filtered, at fp32: about 40M x 768 x 4 B = 120 GB; use
``--sample-ratio``). A distributed (Beam) k-means is not offered.
"""

from __future__ import annotations

import io
import time

import numpy as np

from beam_filter import fsio
from beam_filter.errors import UserError

NUM_CLUSTERS = 100_000
NITER = 20
SEED = 0
MAX_POINTS_PER_CENTROID = 10_000_000


def caption_passes(caption: str | None, lid_model: str | None = None) -> bool:
    """DataComp's caption_filter for image_based_clustering (and apply_filter's image_based)."""
    from beam_filter.rules.datacomp import image_based_caption_reason
    from beam_filter.rules.language import detect_language

    return image_based_caption_reason(caption, detect_language(caption, lid_model)[0]) is None


def load_embeddings(metadata_dir: str | None = None, scores_dir: str | None = None, key: str = "l14_img",
                    caption_filtering: bool = True, sample_ratio: float = -1.0,
                    lid_model: str | None = None) -> np.ndarray:
    """The (n, d) float32 embeddings DataComp clusters, rows in part order then row order."""
    from beam_filter.cluster.sampling import uid_unit

    parts = []
    for rows in _iter_parts(metadata_dir, scores_dir, key):
        keep = [r for r in rows if r.get(key) is not None
                and (not caption_filtering or caption_passes(r.get("text", r.get("caption")), lid_model))
                and (sample_ratio <= 0 or uid_unit(str(r.get("uid")), "build-centroids") < sample_ratio)]
        if keep:
            parts.append(np.stack([np.asarray(r[key], dtype=np.float32) for r in keep]))
    if not parts:
        raise UserError("build-centroids: no embedding passed the caption filter")
    return np.vstack(parts).astype(np.float32)


def _iter_parts(metadata_dir, scores_dir, key):
    if bool(metadata_dir) == bool(scores_dir):
        raise UserError("build-centroids needs exactly one of --metadata DIR or --scores DIR")
    if metadata_dir:
        from beam_filter.datacomp_metadata import iter_metadata_rows, list_metadata_files

        files = list_metadata_files(metadata_dir)
        if not files:
            raise UserError(f"--metadata {metadata_dir}: no parquet parts")
        for parquet, npz in files:
            if npz is None:
                raise UserError(f"{parquet}: no .npz beside it (the embeddings)")
            yield list(iter_metadata_rows(parquet, npz, embeddings=[key]))
    else:
        from beam_filter import tables
        from beam_filter.layout import OutputLayout, embeddings_beside

        files = OutputLayout(scores_dir).score_files()
        if not files:
            raise UserError(f"--scores {scores_dir}: no scores/*.parquet")
        for path in files:
            yield tables.read_rows(path, embeddings_beside(path))


def train_kmeans(embeddings: np.ndarray, num_clusters: int = NUM_CLUSTERS, seed: int = SEED,
                 niter: int = NITER) -> np.ndarray:
    """faiss k-means as image_based_clustering.train_kmeans sets it up (CPU L2 index)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if num_clusters < 1 or num_clusters > len(x):
        raise UserError(f"build-centroids: {num_clusters} clusters need at least as many embeddings "
                        f"(have {len(x)})")
    d = x.shape[1]
    clus = faiss.Clustering(d, num_clusters)
    clus.niter = niter
    clus.seed = seed
    clus.max_points_per_centroid = MAX_POINTS_PER_CENTROID
    index = faiss.IndexFlatL2(d)
    clus.train(x, index)
    return faiss.vector_float_to_array(clus.centroids).reshape(num_clusters, d)


def save_centroids(path: str, centroids: np.ndarray) -> None:
    """``.pt``: torch.save of the numpy array, pickle protocol 4 (DataComp's file); else ``.npy``."""
    buf = io.BytesIO()
    if path.endswith(".pt"):
        import torch

        torch.save(np.ascontiguousarray(centroids, dtype=np.float32), buf, pickle_protocol=4)
    else:
        np.save(buf, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    fsio.write_bytes_atomic(path, buf.getvalue())


def build_centroids(output: str, *, metadata_dir: str | None = None, scores_dir: str | None = None,
                    key: str = "l14_img", num_clusters: int = NUM_CLUSTERS, seed: int = SEED,
                    niter: int = NITER, caption_filtering: bool = True, sample_ratio: float = -1.0,
                    lid_model: str | None = None) -> dict:
    """Load, cluster, save; returns what was done (printed by the CLI)."""
    if not output.endswith((".pt", ".npy")):
        raise UserError(f"--output {output}: name a .pt (DataComp's format) or .npy file")
    if fsio.exists(output):
        raise UserError(f"--output {output} exists; beam-filter does not replace a file it did not write "
                        "(remove it or choose another name)")
    t0 = time.time()
    emb = load_embeddings(metadata_dir, scores_dir, key, caption_filtering, sample_ratio, lid_model)
    t1 = time.time()
    cents = train_kmeans(emb, num_clusters, seed, niter)
    save_centroids(output, cents)
    return {"embeddings": int(len(emb)), "dim": int(emb.shape[1]), "clusters": int(num_clusters),
            "load_s": round(t1 - t0, 2), "kmeans_s": round(time.time() - t1, 2), "output": output}
