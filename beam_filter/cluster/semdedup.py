"""SemDeDup (Abbas et al. 2023) on one cluster: pure numpy, no Beam.

The rule, matched to the reference code (facebookresearch/SemDeDup,
``semdedup.py`` and ``clustering/sort_clusters.py``):

1. Embeddings are L2-normalised; each item's distance to its cluster centroid is
   ``1 - cos(item, centroid)``.
2. Items are ordered by that distance, **farthest first** by default
   (``which_to_keep: hard``); ``order="closest"`` is the reference's ``easy``.
   The reference breaks ties by dataset position (a stable sort); we break them
   by uid, which is what "position" means in a pool without a global order.
3. With ``S`` the cosine-similarity matrix in that order, the reference takes the
   strict upper triangle and ``M[j] = max_{i<j} S[i, j]``: the max similarity of
   item ``j`` to **any earlier item, kept or not** (earlier items that are
   themselves dropped still count). Item ``j`` is dropped when ``M[j] > 1 - eps``.
   So the first item of every cluster is always kept, and a chain a~b~c drops
   both b and c even when c is not close to a.
4. The reference only records keep/drop; our reason names the earlier item with
   the highest similarity (the first one in order on ties):
   ``semantic_duplicate_of:<uid>``.

The reference computes the full n x n matrix; here rows are processed in blocks
of ``block`` so memory is ``block x n`` floats, with identical results.

Bounded groups (``max_cluster_size``): a cluster larger than the bound is cut
into contiguous ranges of the order above (``split_cuts`` plans range cuts on
the similarity to the centroid; ``semdedup_slices`` enforces the bound inside a
group). Items in different ranges are never compared, so the dropped set is a
*subset* of the exact SemDeDup's: an item is missed only when all its
near-duplicates lie in another range. Near-duplicates have nearly equal
distance to the centroid (for unit vectors ``|cos(a,c) - cos(b,c)| <= |a - b|``,
and ``|a - b| < sqrt(2 eps)`` for a duplicate pair), so only pairs straddling a
cut are lost. With no cluster over the bound the result is exact.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from beam_filter.cluster.kmeans import normalize
from beam_filter.identity import token_uid
from beam_filter.records import Verdict

REASON_PREFIX = "semantic_duplicate_of:"
ORDERS = ("farthest", "closest")


def order_items(uids: Sequence[str], sims_to_centroid, order: str = "farthest") -> np.ndarray:
    """Permutation putting items in SemDeDup order (distance to centroid, then uid)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    dist = 1.0 - np.asarray(sims_to_centroid, dtype=np.float64)
    primary = -dist if order == "farthest" else dist
    return np.lexsort((np.asarray(uids, dtype=object).astype(str), primary))


def max_sim_to_earlier(x: np.ndarray, block: int | None = None):
    """For rows of unit vectors ``x`` (already in order): ``(M, argmax)`` over earlier rows.

    ``M[0]`` is -inf and ``argmax[0]`` is -1 (nothing earlier). Computed in row
    blocks so memory stays ``block x n``.
    """
    n = x.shape[0]
    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return best, arg
    if block is None:
        block = max(1, min(n, (16 << 20) // n))
    for s in range(1, n, block):
        e = min(n, s + block)
        sims = x[s:e] @ x[:e].T                     # (e - s) x e: each row vs all rows up to e
        rows = np.arange(s, e)[:, None]
        sims[np.arange(e)[None, :] >= rows] = -np.inf   # keep strictly earlier items only
        a = np.argmax(sims, axis=1)
        arg[s:e] = a
        best[s:e] = sims[np.arange(e - s), a]
    return best, arg


def semdedup_group(uids: Sequence[str], emb, sims_to_centroid, eps: float,
                   order: str = "farthest", *, normalized: bool = False) -> dict[str, str]:
    """SemDeDup on one group: ``{dropped uid: uid of its most similar earlier item}``.

    ``sims_to_centroid`` is each item's cosine with its centroid (``kmeans.assign``
    returns it), used only for the order.
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    n = len(uids)
    if n < 2:
        return {}
    perm = order_items(uids, sims_to_centroid, order)
    x = np.asarray(emb, dtype=np.float32)[perm]
    x = x if normalized else normalize(x)
    best, arg = max_sim_to_earlier(x)
    ordered = [uids[i] for i in perm]
    thr = np.float32(1.0 - eps)
    return {ordered[j]: ordered[int(arg[j])] for j in np.nonzero(best > thr)[0]}


def split_cuts(count: int, sample_sims: Sequence[float], max_size: int, fill: float = 0.8) -> list[float]:
    """Range cuts on similarity-to-centroid that split a cluster of ``count`` rows into parts.

    ``sample_sims`` is a deterministic sample of the cluster's similarities (the
    bottom-k by uid hash). Parts target ``fill * max_size`` rows so sampling
    error rarely pushes one over the bound; ``semdedup_slices`` enforces it
    anyway. Returns sorted, distinct cut values (empty: no split needed).
    """
    if count <= max_size or not len(sample_sims):
        return []
    parts = math.ceil(count / max(1, int(max_size * fill)))
    s = np.sort(np.asarray(sample_sims, dtype=np.float64))
    cuts = [float(s[min(len(s) - 1, (len(s) * i) // parts)]) for i in range(1, parts)]
    return sorted(set(cuts))


def part_of(sim: float, cuts: Sequence[float]) -> int:
    """Index of the range a similarity falls in (``cuts`` from ``split_cuts``)."""
    import bisect

    return bisect.bisect_right(cuts, sim)


def semdedup_slices(records: Iterable, eps: float, order: str, max_size: int) -> dict[str, str]:
    """SemDeDup over a group of ``(uid, sim_to_centroid, unit embedding)`` with bounded memory.

    A group that fits in ``max_size`` rows is deduplicated exactly. A larger one
    (the range plan under-estimated it) is cut into consecutive slices of
    ``max_size`` rows in SemDeDup order, each deduplicated alone: one pass keeps
    only ``(uid, sim)`` per row, then each slice re-reads the (re-iterable)
    group for its own embeddings, so at most ``max_size`` embeddings are held.
    """
    held: list = []
    overflow = False
    for rec in records:
        held.append(rec)
        if len(held) > max_size:
            overflow = True
            break
    if not overflow:
        if not held:
            return {}
        uids = [r[0] for r in held]
        return semdedup_group(uids, np.stack([r[2] for r in held]), [r[1] for r in held], eps, order,
                              normalized=True)
    del held
    keys = [(r[0], float(r[1])) for r in records]
    perm = order_items([k[0] for k in keys], [k[1] for k in keys], order)
    slice_of = {keys[i][0]: pos // max_size for pos, i in enumerate(perm)}
    out: dict[str, str] = {}
    for sl in range(math.ceil(len(keys) / max_size)):
        part = [r for r in records if slice_of[r[0]] == sl]
        out.update(semdedup_group([r[0] for r in part], np.stack([r[2] for r in part]),
                                  [r[1] for r in part], eps, order, normalized=True))
    return out


def part_verdicts(cluster: int, items: Iterable, eps: float, order: str, max_size: int,
                  cluster_column: str | None = None) -> list[tuple[str, Verdict]]:
    """SemDeDup verdicts of one ``(cluster, part)`` group of ``(token, sim, unit embedding)`` items.

    Tokens (``identity.row_token``) order as their uids, so the order is the reference's.
    Every dropped item gets ``semantic_duplicate_of:<uid>``; with ``cluster_column``, every
    item also gets a verdict recording its cluster id in that column. Sorted by token.
    """
    items = list(items)
    dropped = semdedup_slices(items, eps, order, max_size)
    if cluster_column is None:
        return [(token, Verdict(REASON_PREFIX + token_uid(dropped[token]), None)) for token in sorted(dropped)]
    columns = {cluster_column: int(cluster)}
    out = []
    for token in sorted(item[0] for item in items):
        reason = REASON_PREFIX + token_uid(dropped[token]) if token in dropped else None
        out.append((token, Verdict(reason, None, columns)))
    return out
