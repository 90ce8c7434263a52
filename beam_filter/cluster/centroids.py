"""Nearest-centroid search over fixed centroids: DataComp image_based's cluster test.

DataComp's ``image_based`` baseline keeps an image when the nearest centroid of
its L/14 embedding (argmax inner product, faiss ``IndexFlatIP``, embeddings used
as given: no renormalisation) is a *target* centroid. ``centroids``: a (k, d)
float array (DataComp: faiss k-means, 100,000 clusters on L/14 image features of
the caption-filtered pool); ``targets``: integer ids of the centroids nearest to
ImageNet-1k train image features, made with :func:`target_centroids`
(``np.save("targets.npy", target_centroids(C, imagenet_l14_feats))``).

The caption pre-filter comes first (``rules.datacomp.image_based_caption_reason``);
:func:`target_cluster_verdicts` applies both to a batch of rows, one search per
batch. ``kmeans.py`` is the other nearest-centroid code: it normalises both sides
(cosine) for the cluster stages; this module reproduces DataComp's raw inner product.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from beam_filter.errors import UserError
from beam_filter.identity import row_token
from beam_filter.records import Verdict

MISS_REASON = "not_in_target_clusters"


class CentroidIndex:
    """Exact maximum-inner-product search over fixed centroids (faiss IndexFlatIP, else numpy).

    Built once per process per centroid file; ``search`` is safe to call from threads.
    """

    def __init__(self, centroids: np.ndarray):
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if c.ndim != 2 or len(c) == 0:
            raise UserError(f"centroids must be a non-empty (k, d) array, not shape {c.shape}")
        self.centroids = c
        try:
            import faiss
        except ImportError:
            self.index = None
        else:
            self.index = faiss.IndexFlatIP(c.shape[1])
            self.index.add(c)

    def search(self, embeddings: np.ndarray, chunk: int = 1024) -> np.ndarray:
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        c = self.centroids
        if x.ndim != 2 or x.shape[1] != c.shape[1]:
            raise UserError(f"image_based: embeddings of shape {x.shape} do not match centroids "
                            f"of shape {c.shape} (e.g. L/14 features are 768-d)")
        if len(x) == 0:
            return np.zeros(0, np.int64)
        if self.index is not None:
            _, ids = self.index.search(x, 1)
            return ids[:, 0].astype(np.int64)
        return np.concatenate([np.argmax(x[i:i + chunk] @ c.T, axis=1)
                               for i in range(0, len(x), chunk)]).astype(np.int64)


def nearest_centroids(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the centroid with the largest inner product, per row (DataComp's faiss search).

    Embeddings are used as given (DataComp does not renormalise the fp16 features).
    """
    return CentroidIndex(centroids).search(embeddings)


def target_centroids(centroids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Sorted unique ids of the centroids nearest to ``features`` (DataComp: ImageNet-1k train, L/14)."""
    return np.unique(nearest_centroids(features, centroids)).astype(np.int64)


class TargetClusters:
    """A centroid index and the target centroid ids: which embeddings land in a target cluster."""

    def __init__(self, index: CentroidIndex, targets: np.ndarray, source: str = "targets"):
        """``source`` names the targets (their file) in the error when they are not integer ids."""
        if not np.issubdtype(targets.dtype, np.integer):
            raise UserError(f"image_based: {source} must hold integer centroid ids, "
                            f"not {targets.dtype}")
        self.index, self.targets = index, targets

    def hits(self, embeddings: np.ndarray) -> np.ndarray:
        """Per row: is its nearest centroid a target?"""
        return np.isin(self.index.search(embeddings), self.targets)


def target_cluster_verdicts(rows: Iterable[dict], pre_reason: Callable[[dict], str | None],
                            embedding_of: Callable[[dict], np.ndarray],
                            clusters: Callable[[], TargetClusters]) -> list[tuple[str, Verdict]]:
    """DataComp image_based on a batch of rows: ``(row token, Verdict)`` for every dropped row.

    A row failing ``pre_reason`` (the caption pre-filter) is dropped with that reason;
    the others are searched together and dropped with ``not_in_target_clusters`` when
    their nearest centroid is not a target. ``embedding_of`` is asked only for searched
    rows; ``clusters`` is called only when some row is searched (it loads the index).
    """
    out, searched = [], []
    for row in rows:
        why = pre_reason(row)
        if why is not None:
            out.append((row_token(row), Verdict(reason=why)))
        else:
            searched.append(row)
    if searched:
        index = clusters()
        hit = index.hits(np.stack([embedding_of(r) for r in searched]))
        out.extend((row_token(r), Verdict(reason=MISS_REASON))
                   for r, ok in zip(searched, hit) if not ok)
    return out
