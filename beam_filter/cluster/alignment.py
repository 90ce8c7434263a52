"""Distribution alignment over clusters ("The Devil is in the Details", 2309.15954): pure numpy.

The paper describes cluster-importance selection, cluster-balanced sampling and
quality-based duplication but does not publish formulas or numbers for them;
the rules below are our choices, stated so a user can reason about them:

cluster importance
    A cluster's target weight ``q_c`` is the share of target embeddings (e.g.
    ImageNet or eval-set image features, an ``.npy``) whose nearest centroid is
    ``c``, plus ``alpha`` smoothing (DataComp's image_based baseline is the hard
    version: keep clusters with any target). We then keep ``target_size`` rows
    in expectation, allocating ``min(n_c, lambda * q_c)`` to cluster ``c`` (water
    filling: clusters too small for their share are kept whole and the rest is
    spread over the others). A row is kept when its uid coin
    (``sampling.uid_unit``) is below ``allocation_c / n_c``, so the selection is
    deterministic and the kept size is ``target_size`` up to binomial noise.

cluster balance
    Keep at most ``cap`` rows per cluster: the best by a score column (higher
    first, then uid hash), or, without a score, those with the smallest uid hash
    (a seeded uniform choice).

quality duplication
    Within each cluster, rows are ranked by a score column; a row in the top
    ``fractions[i]`` of its cluster gets ``copies[i]`` copies (the first tier that
    holds it), others get 1. The cut scores come from a deterministic sample of
    ``sample_size`` rows per cluster (bottom-k by uid hash); clusters no larger
    than that are ranked exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from beam_filter.cluster.sampling import uid_hash64, uid_unit
from beam_filter.identity import token_uid

IMPORTANCE_REASON = "cluster_importance_not_sampled"
BALANCE_REASON = "cluster_over_cap"


# ---- cluster importance ------------------------------------------------------

def target_weights(target_emb, centroids, alpha: float = 0.0) -> np.ndarray:
    """``q_c``: share of target embeddings nearest to each centroid, smoothed by ``alpha``."""
    from beam_filter.cluster.kmeans import assign

    k = len(centroids)
    labels, _ = assign(target_emb, centroids)
    counts = np.bincount(labels, minlength=k).astype(np.float64) + float(alpha)
    total = counts.sum()
    if total <= 0:
        raise ValueError("target set is empty and alpha is 0: no cluster has any weight")
    return counts / total


def importance_keep_probs(pool_counts, q, target_size: float) -> np.ndarray:
    """Per-cluster keep probability so that ``sum_c n_c p_c = target_size`` (water filling).

    ``p_c = min(1, lambda q_c / n_c)`` with ``lambda`` solved exactly. When the
    clusters with weight hold fewer than ``target_size`` rows, all of them are
    kept (the target cannot be reached).
    """
    n = np.asarray(pool_counts, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = np.zeros_like(n)
    live = (n > 0) & (q > 0)
    if not live.any() or target_size <= 0:
        return p
    if n[live].sum() <= target_size:
        p[live] = 1.0
        return p
    # A cluster saturates (p = 1) once lambda >= n_c / q_c; walk those breakpoints in order.
    t = n[live] / q[live]
    order = np.argsort(t, kind="stable")
    nl, ql, tl = n[live][order], q[live][order], t[order]
    sat_rows = 0.0
    q_left = ql.sum()
    lam = target_size / q_left
    for i in range(len(tl)):
        lam = (target_size - sat_rows) / q_left
        if lam <= tl[i]:
            break
        sat_rows += nl[i]
        q_left -= ql[i]
    p[live] = np.minimum(1.0, lam * q[live] / n[live])
    return p


def cluster_keep_probs(counts: dict, target_emb, centroids, *, fraction: float | None = None,
                       size: int | None = None, alpha: float = 0.0) -> np.ndarray:
    """Per-cluster keep probability from pool counts ``{cluster: rows}`` and a target set.

    Keeps ``size`` rows when given, else ``fraction`` of the counted rows, spread by
    ``target_weights`` (``importance_keep_probs``).
    """
    n = np.zeros(len(centroids))
    for c, k in counts.items():
        n[c] = k
    want = size if size is not None else fraction * n.sum()
    q = target_weights(target_emb, centroids, alpha)
    return importance_keep_probs(n, q, want)


def importance_keep(uid: str, cluster: int, probs: np.ndarray, seed: int = 0) -> bool:
    return uid_unit(uid, f"importance{seed}") < probs[cluster]


# ---- cluster balance -----------------------------------------------------------

def balance_key(uid: str, score=None, seed: int = 0) -> tuple:
    """Total order of rows within a cluster: best first (higher score, then uid hash, then uid).

    ``uid`` may be a row token (identity.py): only its uid part is hashed, the
    whole token breaks the last tie, so two samples sharing a uid stay distinct."""
    h = uid_hash64(token_uid(uid), f"balance{seed}")
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return (1, 0.0, h, uid)
    return (0, -float(score), h, uid)


def balance_cut(count: int, best_keys: Sequence[tuple], cap: int) -> tuple | None:
    """The ``balance_key`` of the worst row kept in a cluster of ``count`` rows whose ``cap``
    best keys (sorted) are ``best_keys``; None when the cluster is within the cap."""
    return best_keys[-1] if count > cap else None


def over_cap(key: tuple, cut: tuple | None) -> bool:
    """Is a row (its ``balance_key``) beyond its cluster's cut (``balance_cut``)?"""
    return cut is not None and key > cut


def balance_dropped(uids: Sequence[str], clusters: Sequence[int], cap: int,
                    scores: Sequence | None = None, seed: int = 0) -> set[str]:
    """uids beyond the ``cap`` best of their cluster (pure reference of the Beam stage)."""
    by: dict[int, list] = {}
    for i, (u, c) in enumerate(zip(uids, clusters)):
        by.setdefault(int(c), []).append(balance_key(u, None if scores is None else scores[i], seed))
    out: set[str] = set()
    for keys in by.values():
        keys.sort()
        out.update(k[3] for k in keys[cap:])
    return out


# ---- quality duplication ----------------------------------------------------

def check_tiers(fractions: Sequence[float], copies: Sequence[int]) -> None:
    if len(fractions) != len(copies) or not fractions:
        raise ValueError("fractions and copies must be non-empty lists of the same length")
    if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise ValueError(f"fractions must be increasing, in (0, 1]: {list(fractions)}")
    if any(int(c) < 1 for c in copies):
        raise ValueError(f"copies must be >= 1: {list(copies)}")


def tier_cuts(sample_scores: Sequence[float], fractions: Sequence[float]) -> list[float]:
    """Score a row needs to be in the top ``f`` of its cluster, for each tier fraction ``f``."""
    s = sorted((float(x) for x in sample_scores), reverse=True)
    if not s:
        return [math.inf] * len(fractions)
    return [s[max(0, math.ceil(f * len(s)) - 1)] for f in fractions]


def has_score(score) -> bool:
    """A score that ranks: not None, not NaN."""
    return score is not None and not (isinstance(score, float) and math.isnan(score))


def copies_for(score, cuts: Sequence[float], copies: Sequence[int]) -> int:
    """Copies of a row: the first tier whose cut it reaches, else 1 (missing score: 1)."""
    if not has_score(score):
        return 1
    for cut, c in zip(cuts, copies):
        if float(score) >= cut:
            return int(c)
    return 1


def cluster_copies(score, cuts: Sequence[float] | None, copies: Sequence[int]) -> int:
    """``copies_for`` with the tier cuts of the row's cluster; a cluster without cuts (no
    scored row in its sample) gives every row 1 copy."""
    return copies_for(score, [math.inf] * len(copies) if cuts is None else cuts, copies)


def duplication_sample_key(uid: str, seed: int = 0) -> int:
    return uid_hash64(uid, f"dup{seed}")


def duplication_copies(uids: Sequence[str], clusters: Sequence[int], scores: Sequence,
                       fractions: Sequence[float], copies: Sequence[int], sample_size: int = 4096,
                       seed: int = 0) -> dict[str, int]:
    """``{uid: copies}`` for every row (pure reference of the Beam stage)."""
    check_tiers(fractions, copies)
    by: dict[int, list] = {}
    for u, c, s in zip(uids, clusters, scores):
        if has_score(s):
            by.setdefault(int(c), []).append((duplication_sample_key(u, seed), u, float(s)))
    cuts = {c: tier_cuts([x[2] for x in sorted(v)[:sample_size]], fractions) for c, v in by.items()}
    return {u: cluster_copies(s, cuts.get(int(c)), copies) for u, c, s in zip(uids, clusters, scores)}
