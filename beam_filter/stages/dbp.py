"""Recipe stage ``dbp``: Density-Based Pruning over any embedding column (cluster/dbp.py).

A group stage: k-means over the embedding, a per-cluster complexity, the
closed-form allocation of the kept budget, then the hardest members of each
cluster (``transforms/dbp.DensityPrune``). The reference runs SemDeDup first; the
``dbp`` preset lists a ``semdedup`` stage before this one.

Every row with the embedding gets ``{id}_cluster``, ``{id}_complexity`` and
``{id}_allocation`` (the report's per-cluster table); pruned rows are dropped
with ``dbp_pruned``.
"""

from __future__ import annotations

from beam_filter.cluster import dbp, kmeans
from beam_filter.columns import need
from beam_filter.registry import GroupStage, Param, register
from beam_filter.stages.cluster import _cent_args, _cluster_params


@register
class DensityPruningStage(GroupStage):
    """Keep more samples from complex concept clusters (Abbas et al., ICLR 2024).

    Selected by part, its transform sees slim rows: uid, shard, key and the embedding (docs/memory.md)."""

    name = "dbp"
    description = "density-based pruning: per-cluster budgets from cluster complexity, hardest samples kept"
    params = {
        **_cluster_params(n_clusters=dbp.DEFAULT_K, seed=0, niter=kmeans.DEFAULT_NITER),
        "ratio": Param(float, dbp.DEFAULT_RATIO, "fraction of the rows with an embedding to keep "
                       "(N = int(ratio * total))", check=lambda v: v is not None and 0 < v <= 1,
                       check_msg="must be in (0, 1]"),
        "temperature": Param(float, dbp.DEFAULT_TEMPERATURE, "softmax temperature over complexities",
                             check=lambda v: v is not None and v > 0, check_msg="must be > 0"),
        "n_neighbors": Param(int, dbp.DEFAULT_NEIGHBORS, "nearest other centroids averaged in d_inter",
                             check=lambda v: v is not None and v >= 1, check_msg="must be >= 1"),
        "balance": Param(float, dbp.DEFAULT_BALANCE, "lower bound per cluster: int(N / k * balance) "
                         "(reference cls_bal_ratio)", check=lambda v: v is not None and 0 <= v <= 1,
                         check_msg="must be in [0, 1]"),
    }

    def needs(self):
        return (need(self.p.embedding, what="the embedding to cluster"),)

    def verdict_columns(self) -> tuple[str, ...]:
        return (f"{self.id}_cluster", f"{self.id}_complexity", f"{self.id}_allocation")

    def verdicts(self, alive_rows):
        from beam_filter.transforms.dbp import DensityPrune

        p = self.p
        return alive_rows | f"DensityPrune[{self.id}]" >> DensityPrune(
            p.embedding, ratio=p.ratio, temperature=p.temperature, n_neighbors=p.n_neighbors,
            balance=p.balance, cent_args=_cent_args(p), prefix=self.id)

