"""Recipe stages that need groups of rows: SemDeDup, near-duplicates, decontamination, alignment.

Each stage only validates its parameters and hands them to a PTransform of
``transforms/cluster.py``, whose rules live as pure functions in
``beam_filter/cluster``. Rows without the needed column (no embedding, no
phash) get no verdict: they stay as they were.

Embedding columns: ``clip_image_embedding`` is what a ``clip`` stage with id
``clip`` writes; DataComp metadata rows (``select --metadata``) carry ``l14_img``
and ``b32_img`` instead, so recipes for metadata set ``embedding: l14_img``.
"""

from __future__ import annotations

from typing import Any

from beam_filter.cluster import kmeans, near_dup
from beam_filter.records import READ_ERROR
from beam_filter.process_cache import once_per_process
from beam_filter.columns import need
from beam_filter.registry import GroupStage, Param, RuleStage, register
from beam_filter.stages.score_cut import fraction_ok

DEFAULT_EMBEDDING = "clip_image_embedding"
PHASH = "phash"


def _pos(v) -> bool:
    return v is None or v > 0


def _unit_open(v) -> bool:
    return v is None or 0 < v < 1


def _cluster_params(n_clusters: int, seed: int, niter: int) -> dict[str, Param]:
    return {
        "embedding": Param(str, DEFAULT_EMBEDDING, "embedding column to cluster (DataComp metadata: l14_img)"),
        "n_clusters": Param(int, n_clusters, "k-means clusters (clamped to the training sample size)",
                            check=_pos, check_msg="must be > 0"),
        "centroids": Param(str, None, "a (k, d) float .npy of centroids: skips training (local or gs://)"),
        "sample_size": Param(int, 100_000, "k-means trains on this many rows, chosen by hash of uid",
                             check=_pos, check_msg="must be > 0"),
        "seed": Param(int, seed, "k-means seed (also salts the uid hashes of this stage)"),
        "niter": Param(int, niter, "k-means iterations", check=_pos, check_msg="must be > 0"),
        "spherical": Param(bool, True, "spherical k-means (centroids renormalised every iteration)"),
    }


def _cent_args(p) -> dict:
    return dict(n_clusters=p.n_clusters, sample_size=p.sample_size, seed=p.seed, niter=p.niter,
                spherical=p.spherical, path=p.centroids)


class _PhashFeature:
    """Mixin: compute the 64-bit pHash once per sample in the score phase."""

    score_params = ()

    def feature_columns(self) -> tuple[str, ...]:
        return (PHASH,)

    def features(self, sample) -> dict:
        if sample.features.get(PHASH) is not None or not sample.image:
            return {}
        try:
            return {PHASH: near_dup.phash_bytes(sample.image)}
        except Exception:  # noqa: BLE001 - any decoder failure: the image is unusable
            return {PHASH: None, READ_ERROR: "corrupt_image"}


@register
class SemDeDupStage(GroupStage):
    """SemDeDup: in each k-means cluster, drop items too similar to an earlier one (cluster/semdedup.py).

    Selected by part, its transform sees slim rows: uid, shard, key and the embedding (4 B x dim
    as float32), ~3.3 KB per alive row at 768-d (docs/memory.md)."""

    name = "semdedup"
    description = "semantic dedup of embeddings within k-means clusters (Abbas et al. 2023)"
    params = {
        **_cluster_params(n_clusters=1000, seed=1234, niter=kmeans.DEFAULT_NITER),
        "eps": Param(float, 0.05, "drop when cosine similarity to an earlier item > 1 - eps",
                     check=_unit_open, check_msg="must be in (0, 1)"),
        "order": Param(str, "farthest", "farthest first keeps hard examples (reference default)",
                       choices=("farthest", "closest")),
        "max_cluster_size": Param(int, 20_000, "bigger clusters are cut into ranges of distance to "
                                  "the centroid (pairs across a cut are not compared)",
                                  check=lambda v: v is not None and v >= 2, check_msg="must be >= 2"),
    }

    def needs(self):
        return (need(self.p.embedding, what="the embedding to cluster"),)

    def verdict_columns(self) -> tuple[str, ...]:
        return (f"{self.id}_cluster",)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import SemDeDup

        p = self.p
        return alive_rows | f"SemDeDup[{self.id}]" >> SemDeDup(
            p.embedding, n_clusters=p.n_clusters, eps=p.eps, order=p.order,
            max_cluster_size=p.max_cluster_size, sample_size=p.sample_size, seed=p.seed,
            niter=p.niter, spherical=p.spherical, centroids=p.centroids,
            cluster_column=f"{self.id}_cluster")


@register
class NearDedupStage(_PhashFeature, GroupStage):
    """Near-duplicate images by pHash + LSH banding; one survivor per group (cluster/near_dup.py).

    Selected by part, its transform sees slim rows: uid, shard, key, the pHash, the quality score
    if set (and the embedding only with min_similarity), ~0.5 KB per alive row (docs/memory.md)."""

    name = "near_dedup"
    description = "near-duplicate image removal by perceptual hash (keeps the best of each group)"
    params = {
        "tolerance": Param(int, 4, "max Hamming distance (of 64 bits) between duplicates",
                           check=lambda v: v is not None and 0 <= v < 64, check_msg="must be in [0, 64)"),
        "bands": Param(int, 4, "LSH bands (divides 64); pairs within tolerance < bands are all found",
                       choices=(1, 2, 4, 8, 16)),
        "quality": Param(str, None, "score column: the survivor has the highest (then smallest uid)"),
        "bucket_cap": Param(int, 10_000, "band buckets with more distinct hashes are split into chunk pairs",
                            check=lambda v: v is not None and v >= 2, check_msg="must be >= 2"),
        "embedding": Param(str, DEFAULT_EMBEDDING, "embedding column for the optional similarity check"),
        "min_similarity": Param(float, None, "if set, also require cosine(embedding, survivor's) >= this",
                                check=lambda v: v is None or -1 <= v <= 1, check_msg="must be in [-1, 1]"),
        "decontaminate": Param(str, None, "eval images (dir, glob) or an .npy of pHashes: drop pool "
                               "samples that near-duplicate them"),
        "eval_tolerance": Param(int, None, "Hamming tolerance for decontamination (default: tolerance)"),
    }

    def needs(self):
        p = self.p
        out = [need(PHASH, what="the image's pHash")]
        if p.quality:
            out.append(need(p.quality, what="the quality score choosing the survivor"))
        if p.min_similarity is not None:
            out.append(need(p.embedding, what="the embedding of the similarity check"))
        return tuple(out)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import NearDedup

        p = self.p
        return alive_rows | f"NearDedup[{self.id}]" >> NearDedup(
            bands=p.bands, tolerance=p.tolerance, quality=p.quality, bucket_cap=p.bucket_cap,
            embedding=p.embedding, min_similarity=p.min_similarity, decontaminate=p.decontaminate,
            eval_tolerance=p.eval_tolerance)


@register
class DecontaminateStage(_PhashFeature, RuleStage):
    """Drop pool samples whose image near-duplicates an eval-set image (per row, no shuffle)."""

    name = "decontaminate"
    description = "remove near-duplicates of evaluation images (pHash within tolerance)"
    params = {
        "path": Param(str, None, "eval images (dir, glob) or an .npy of int64 pHashes", required=True),
        "tolerance": Param(int, 4, "max Hamming distance", check=lambda v: v is not None and 0 <= v < 64,
                           check_msg="must be in [0, 64)"),
        "bands": Param(int, 4, "LSH bands of the eval index", choices=(1, 2, 4, 8, 16)),
    }

    def _eval_index(self):
        """Lazily, once per worker process: never at pipeline construction."""
        p = self.p

        def load():
            h, ids = near_dup.load_eval_hashes(p.path)
            return near_dup.EvalIndex(h, ids, p.bands, p.tolerance)

        return once_per_process("eval_phash_index", (p.path, p.bands, p.tolerance), load)

    def needs(self):
        return (need(PHASH, what="the image's pHash"),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        h = row.get(PHASH)
        if h is None:
            return None
        return near_dup.contamination_reason(self._eval_index().match(int(h)))


@register
class ClusterImportanceStage(GroupStage):
    """Resample clusters by how much of a target embedding set they hold (cluster/alignment.py).

    Selected by part, its transform sees slim rows: uid, shard, key and the embedding (docs/memory.md)."""

    name = "cluster_importance"
    description = "cluster-importance resampling towards a target embedding set (Devil in the Details)"
    params = {
        **_cluster_params(n_clusters=1000, seed=0, niter=kmeans.DEFAULT_NITER),
        "target": Param(str, None, "a (n, d) float .npy of target embeddings (e.g. ImageNet image "
                        "features); needed when the stage runs"),
        "fraction": Param(float, 0.5, "keep this fraction of the alive rows (in expectation)",
                          check=fraction_ok, check_msg="must be in (0, 1]"),
        "size": Param(int, None, "keep this many rows instead of a fraction", check=_pos,
                      check_msg="must be > 0"),
        "alpha": Param(float, 0.0, "add-alpha smoothing of target counts per cluster",
                       check=lambda v: v is not None and v >= 0, check_msg="must be >= 0"),
    }

    def needs(self):
        return (need(self.p.embedding, what="the embedding to cluster"),)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import ClusterImportance

        from beam_filter.errors import UserError

        p = self.p
        if not p.target:
            raise UserError(f"stage {self.id!r} (cluster_importance): set target=FILE.npy of target "
                            f"embeddings, e.g. --set {self.id}.target=imagenet_l14_img.npy")
        return alive_rows | f"ClusterImportance[{self.id}]" >> ClusterImportance(
            p.embedding, p.target, fraction=p.fraction, size=p.size, alpha=p.alpha, cent_args=_cent_args(p))


@register
class ClusterBalanceStage(GroupStage):
    """Keep at most ``cap`` rows per cluster: the best by a score, else a uid-hash choice.

    Selected by part, its transform sees slim rows: uid, shard, key, the embedding and the score if
    set (docs/memory.md)."""

    name = "cluster_balance"
    description = "cluster-balanced sampling: cap the rows kept per k-means cluster"
    params = {
        **_cluster_params(n_clusters=1000, seed=0, niter=kmeans.DEFAULT_NITER),
        "cap": Param(int, None, "rows kept per cluster", required=True, check=_pos, check_msg="must be > 0"),
        "score": Param(str, None, "score column; the highest are kept (default: by uid hash)"),
    }

    def needs(self):
        out = [need(self.p.embedding, what="the embedding to cluster")]
        if self.p.score:
            out.append(need(self.p.score, what="the score ranking rows within a cluster"))
        return tuple(out)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import ClusterBalance

        p = self.p
        return alive_rows | f"ClusterBalance[{self.id}]" >> ClusterBalance(
            p.embedding, p.cap, score=p.score, cent_args=_cent_args(p))


def _fractions_ok(v) -> bool:
    try:
        return bool(v) and all(0 < float(x) <= 1 for x in v) and [float(x) for x in v] == sorted(map(float, v))
    except (TypeError, ValueError):
        return False


def _copies_ok(v) -> bool:
    try:
        return bool(v) and all(int(x) >= 1 and float(x) == int(x) for x in v)
    except (TypeError, ValueError):
        return False


@register
class QualityDuplicationStage(GroupStage):
    """Extra copies for rows ranked high by a score within their cluster (upsampling).

    Selected by part, its transform sees slim rows: uid, shard, key, the score and (per_cluster)
    the embedding (docs/memory.md)."""

    name = "quality_duplication"
    description = "quality-based duplication: top-ranked rows of each cluster are written several times"
    params = {
        **_cluster_params(n_clusters=1000, seed=0, niter=kmeans.DEFAULT_NITER),
        "score": Param(str, None, "score column to rank by (higher is better)", required=True),
        "fractions": Param(list, [0.1, 0.3], "tier bounds: top 10%, top 30% (our choice)",
                           check=_fractions_ok, check_msg="must be increasing fractions in (0, 1]"),
        "copies": Param(list, [3, 2], "copies per tier (our choice); rows below every tier get 1",
                        check=_copies_ok, check_msg="must be integers >= 1"),
        "rank_sample": Param(int, 4096, "per-cluster sample (by uid hash) the tier cuts come from",
                             check=_pos, check_msg="must be > 0"),
        "per_cluster": Param(bool, True, "rank within k-means clusters; false = one global ranking"),
    }

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        from beam_filter.errors import UserError

        if len(self.p.fractions) != len(self.p.copies):
            raise UserError(f"stage {stage_id!r}: fractions and copies must have the same length")

    def needs(self):
        out = [need(self.p.score, what="the score ranking rows")]
        if self.p.per_cluster:
            out.append(need(self.p.embedding, what="the embedding to cluster"))
        return tuple(out)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import QualityDuplication

        p = self.p
        return alive_rows | f"QualityDuplication[{self.id}]" >> QualityDuplication(
            p.embedding if p.per_cluster else None, p.score, [float(f) for f in p.fractions],
            [int(c) for c in p.copies], sample_size=p.rank_sample, cent_args=_cent_args(p))
