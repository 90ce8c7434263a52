"""k-means centroids for the cluster stages: train (faiss), assign (argmax inner product), save/load.

Why this shape:

* Embeddings are L2-normalised before anything else, so an inner product is a
  cosine similarity and "nearest centroid" means the same thing in training and
  in assignment (DataComp's image_based baseline and SemDeDup both assign by
  argmax inner product).
* Training runs on a *deterministic sample*: the ``sample_size`` rows with the
  smallest hash of uid (``sampling.uid_hash64``), given to faiss sorted by that
  hash with a fixed seed. The same pool therefore gives the same centroids on
  every runner, whatever the order rows arrive in.
* Centroids are a small ``.npy`` (k x d float32) written with
  ``allow_pickle=False``; a ``centroids`` path given by the user (DataComp ships
  precomputed ones) skips training entirely.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from beam_filter import fsio
from beam_filter.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_NITER = 20          # DataComp image_based: 20 iterations; SemDeDup reference uses 100
DEFAULT_SEED = 0


def normalize(emb) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (all-zero rows stay zero)."""
    x = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def sample_by_uid(uids, size: int, seed: int | str = DEFAULT_SEED) -> np.ndarray:
    """Indices of the ``size`` rows with the smallest uid hash, in hash order.

    This is the pure counterpart of the Beam sampling combiner: both pick the
    bottom-``size`` rows by ``uid_hash64(uid, f"kmeans{seed}")``.
    """
    from beam_filter.cluster.sampling import uid_hash64

    salt = f"kmeans{seed}"
    keyed = sorted((uid_hash64(u, salt), u, i) for i, u in enumerate(uids))
    return np.array([i for _, _, i in keyed[:size]], dtype=np.int64)


def train_kmeans(emb, n_clusters: int, *, niter: int = DEFAULT_NITER, seed: int = DEFAULT_SEED,
                 spherical: bool = True, normalized: bool = False) -> np.ndarray:
    """Train k-means with faiss; returns float32 centroids of shape (k', d).

    ``emb`` is the (already chosen) training sample in a deterministic order.
    ``k' = min(n_clusters, n_rows)``: a tiny pool (a smoke test, a quickstart
    sample) still gets a usable clustering instead of a faiss error; the
    shrink is logged. ``spherical`` renormalises centroids every iteration
    (SemDeDup's setting); plain k-means centroids are normalised at the end
    so assignment by inner product stays a cosine.
    """
    import faiss

    x = emb if normalized else normalize(emb)
    n, d = x.shape
    if n == 0:
        raise UserError("k-means: no embeddings to train on (is the embedding column empty?)")
    if n_clusters < 1:
        raise UserError(f"k-means: n_clusters must be >= 1, got {n_clusters}")
    k = min(int(n_clusters), n)
    if k < n_clusters:
        log.warning("k-means: only %d training rows, using %d clusters instead of %d", n, k, n_clusters)
    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(seed), spherical=bool(spherical),
                      verbose=False, min_points_per_centroid=1)
    km.train(x)
    return normalize(km.centroids)


def assign(emb, centroids, *, batch_size: int | None = None, normalized: bool = False):
    """Nearest centroid of each row by argmax inner product, batched.

    Returns ``(labels int64[n], sims float32[n])`` where ``sims`` is the inner
    product with the chosen centroid (a cosine when both are normalised). Ties
    go to the lowest centroid index (numpy argmax), so assignment is
    deterministic. Batches keep the n x k similarity block near 64 MB.
    """
    x = emb if normalized else normalize(emb)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise UserError(f"centroids of shape {c.shape} do not match embeddings of dimension {x.shape[1]}")
    n = x.shape[0]
    if batch_size is None:
        batch_size = max(1, min(65536, (16 << 20) // max(1, c.shape[0])))
    labels = np.empty(n, dtype=np.int64)
    sims = np.empty(n, dtype=np.float32)
    c64 = c.astype(np.float64)
    for s in range(0, n, batch_size):
        rows = x[s:s + batch_size]
        block = rows @ c.T
        lab = np.argmax(block, axis=1)
        # A float32 matrix product's last bits depend on how many rows it holds (BLAS blocking),
        # and Beam batches rows differently from run to run (or by part vs the general graph):
        # near-ties are decided again row by row, and the cosine with the chosen centroid is
        # recomputed per row in float64, so both depend on the row alone.
        if c.shape[0] > 1:
            top2 = np.partition(block, -2, axis=1)[:, -2:]
            for i in np.flatnonzero(top2[:, 1] - top2[:, 0] < _TIE_GAP):
                lab[i] = int(np.argmax(c64 @ rows[i].astype(np.float64)))
        labels[s:s + batch_size] = lab
        sims[s:s + batch_size] = np.einsum("ij,ij->i", rows.astype(np.float64), c64[lab]).astype(np.float32)
    return labels, sims


_TIE_GAP = 1e-4     # far above float32 rounding of a 768-d unit inner product (~1e-6)


def save_centroids(path: str, centroids) -> None:
    """Write centroids as a plain float32 ``.npy`` (local path or gs://), atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(centroids, dtype=np.float32), allow_pickle=False)
    fsio.write_bytes_atomic(path, buf.getvalue())


def load_centroids(path: str, *, dim: int | None = None, unit_norm: bool = True) -> np.ndarray:
    """Read a (k, d) float centroid array (``save_centroids`` output, or DataComp's file).

    With ``unit_norm`` (the cluster stages' setting) rows are normalised so the
    inner product used by ``assign`` is a cosine. DataComp's image_based
    baseline assigns by inner product with its raw, non-normalised faiss
    centroids; pass ``unit_norm=False`` to reproduce that exactly.
    """
    arr = fsio.load_npy(path, "centroids")
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or arr.shape[0] == 0:
        raise UserError(f"{path}: centroids must be a non-empty 2-D float array, got {arr.dtype} {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise UserError(f"{path}: centroids have dimension {arr.shape[1]}, embeddings have {dim}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if unit_norm and np.any(np.abs(np.linalg.norm(arr, axis=1) - 1.0) > 1e-5):
        arr = normalize(arr)     # already-unit rows are left bit-identical (saved == trained)
    return arr
