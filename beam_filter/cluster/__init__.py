"""Clustering, deduplication and distribution alignment as plain numpy functions.

- ``sampling``: deterministic choices by hash of uid.
- ``kmeans``: train (faiss), assign (argmax inner product), save/load centroids.
- ``centroids``: exact nearest-centroid search on fixed centroids (DataComp image_based).
- ``exact_dup``: byte-identical images by sha256, the smallest uid survives.
- ``semdedup``: SemDeDup within a cluster, matched to the reference code.
- ``near_dup``: pHash, LSH banding, union-find components, survivors, eval decontamination.
- ``alignment``: cluster-importance resampling, cluster-balanced caps, quality-based duplication.

``transforms/cluster.py`` runs these per cluster in Beam; ``stages/cluster.py``
(and ``stages/rules.py``, ``stages/datacomp.py``) expose them to recipes.
"""
