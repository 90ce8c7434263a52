"""DataComp's baselines beyond basic_filter and clip_score: laion2b, text_based, image_based.

The rules are plain functions, exactly as DataComp's baselines.py applies them
(mlfoundations/datacomp): ``rules/datacomp.py`` (laion2b, text_based, image_based's
caption pre-filter) and ``cluster/centroids.py`` (image_based's nearest-centroid
test, ``target_centroids`` to make its targets). The stage classes below only adapt
them to the score and select phases.

* ``laion2b``: CLIP ViT-B/32 score >= 0.28 AND gcld3 language ``en``.
* ``text_based``: fastText lid.176 ``en`` AND an ImageNet-21k WordNet concept in the caption.
* ``image_based``: caption pre-filter (fastText ``en``, more than 1 fastText token,
  more than 5 characters), then the image embedding's nearest centroid (argmax inner
  product) must be a *target* centroid. ``centroids``: a (k, d) float .npy or DataComp's
  ``.pt``; ``targets``: files of target centroid ids or of target embeddings (DataComp's
  ``in1k_clip_vit_l14_{0..4}.pt``, whose nearest centroids are the targets), .npy or .pt.
  A row's centroid does not depend on its batch (tie rule: ``cluster/centroids.py``).
  The rows are searched in batches by ``transforms/cluster.NearestCentroidVerdicts``.

A row fails with the first failing test in the order written above (DataComp only
ANDs masks). Where scores or embeddings come from: DataComp metadata rows carry
``clip_b32_similarity_score`` / ``l14_img``; on scored shards name the clip stage
that computed them (``clip_stage: clip_b32`` reads ``clip_b32_score``, ``clip_stage:
clip_l14`` reads ``clip_l14_image_embedding``). A row with the clip stage's column
uses it; otherwise the DataComp column is used, so one recipe serves both inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beam_filter.cluster.centroids import (MISS_REASON, CentroidIndex, TargetClusters, load_centroids_file,
                                           load_target_ids, parse_target_paths, target_cluster_verdicts)
from beam_filter.errors import UserError
from beam_filter.identity import row_token
from beam_filter.records import CAPTION, Verdict
from beam_filter.process_cache import once_per_process
from beam_filter.columns import need
from beam_filter.registry import GroupStage, Param, RuleStage, register
from beam_filter.rules.datacomp import (LAION_THRESHOLD, image_based_caption_reason, laion2b_reason,
                                        text_based_reason)
from beam_filter.rules.language import detect_language_cld3, fasttext_token_count
from beam_filter.stages.rules import FastTextLanguage, row_language

CLD3_LANG, CLD3_SCORE = "lang_cld3", "lang_cld3_score"   # same columns as `language` with gcld3
DATACOMP_B32 = "clip_b32_similarity_score"
DATACOMP_L14_IMG = "l14_img"


# ---- per-process caches --------------------------------------------------------------------

def centroid_index(path: str) -> CentroidIndex:
    """The CentroidIndex of a centroid .npy or .pt, built once per process."""
    return once_per_process("centroid_index", path, lambda: CentroidIndex(load_centroids_file(path)))


def target_ids(centroids: str, targets) -> np.ndarray:
    """Target centroid ids from ``targets`` (ids or embeddings, several files), once per process."""
    paths = tuple(parse_target_paths(targets))
    return once_per_process("image_based_targets", (centroids, paths),
                            lambda: load_target_ids(paths, centroid_index(centroids)))


# ---- stages ------------------------------------------------------------------------------


@register
class Laion2B(RuleStage):
    """DataComp's LAION-2B reproduction: B/32 CLIP score >= 0.28 and gcld3 English."""

    name = "laion2b"
    description = "DataComp laion2b baseline: CLIP B/32 score >= 0.28 AND gcld3 language en"
    params = {
        "threshold": Param(float, LAION_THRESHOLD, "keep when the B/32 CLIP score >= this"),
        "clip_stage": Param(str, None, "id of a clip stage (model ViT-B-32) whose {id}_score to use "
                            "when rows have it; else DataComp's clip_b32_similarity_score"),
    }
    score_params = ()

    def feature_columns(self) -> tuple[str, ...]:
        return (CLD3_LANG, CLD3_SCORE)

    def features(self, sample) -> dict:
        lang, score = detect_language_cld3(sample.caption)
        return {CLD3_LANG: lang, CLD3_SCORE: score}

    def needs(self):
        own = f"{self.p.clip_stage}_score" if self.p.clip_stage else None
        return (need(own, DATACOMP_B32, what="the B/32 CLIP score"),
                need(CLD3_LANG, CAPTION, what="the gcld3 language, or the caption to detect it from"))

    def _score(self, row: dict):
        col = f"{self.p.clip_stage}_score" if self.p.clip_stage else None
        if col and col in row:
            return row[col]
        if DATACOMP_B32 in row:
            return row[DATACOMP_B32]
        raise UserError(f"laion2b stage {self.id!r}: rows have no {DATACOMP_B32!r}"
                        + (f" nor {col!r}" if col else "; add a clip stage (model: ViT-B-32) and set "
                           "clip_stage to its id"))

    def reason(self, row: dict, info: Any = None) -> str | None:
        score = self._score(row)
        if laion2b_reason(score, "en", self.p.threshold) is not None:   # the score fails whatever the
            return "clip_score_below_threshold"                          # language: skip detecting it
        return laion2b_reason(score, row_language(row, CLD3_LANG, detect_language_cld3), self.p.threshold)

    def reason_array(self, part, alive, info: Any = None):
        own = f"{self.p.clip_stage}_score" if self.p.clip_stage else None
        column = next((c for c in (own, DATACOMP_B32) if c and part.has(c)), None)
        scores = None if column is None else part.floats(column)
        if scores is None:
            return None         # the row path's one-line error, or a column that is not numbers
        out = np.full(part.n, None, dtype=object)
        low = ~(scores >= self.p.threshold)          # NaN (a missing score) fails too
        out[low] = "clip_score_below_threshold"
        given, captions = part.pylist(CLD3_LANG), part.captions()
        for i in np.flatnonzero(alive & ~low):      # gcld3 has no batch call: only where it decides
            lang = given[i] if given is not None else None
            if lang is None:
                lang = detect_language_cld3(captions[i])[0]
            out[i] = None if lang == "en" else "not_english"
        return out


@register
class TextBased(FastTextLanguage, RuleStage):
    """DataComp text_based: English caption naming an ImageNet-21k concept (WordNet)."""

    name = "text_based"
    description = "DataComp text_based baseline: fastText en AND a caption word whose first WordNet synset is in ImageNet-21k"
    params = {
        "lid_model": Param(str, None, "fastText language-id model (default: bundled lid.176.ftz)"),
        "wordnet_dir": Param(str, None, "WordNet 3.0 database directory (default: searched; "
                             "apt-get install wordnet-base)"),
    }
    def needs(self):
        return (need(CAPTION),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return text_based_reason(row.get(CAPTION), self.row_language(row),
                                 self.p.wordnet_dir)

    def reason_array(self, part, alive, info: Any = None):
        langs, captions = self.language_array(part, alive), part.captions()
        out = np.full(part.n, None, dtype=object)
        out[langs != "en"] = "not_english"
        for i in np.flatnonzero(alive & (langs == "en")):     # WordNet only where it can decide
            out[i] = text_based_reason(captions[i], "en", self.p.wordnet_dir)
        return out


@register
class ImageBased(FastTextLanguage, GroupStage):
    """DataComp image_based: caption pre-filter, then keep images whose nearest centroid is a target."""

    name = "image_based"
    description = ("DataComp image_based baseline: English, > 1 fastText token, > 5 chars, and the "
                   "image embedding's nearest centroid is one of the target (ImageNet-nearest) centroids")
    params = {
        "centroids": Param(str, None, "(k, d) float centroids, .npy or DataComp's .pt (e.g. "
                           "medium_centroids_l14.pt; 100k on L/14; beam-filter build-centroids)", required=True),
        "targets": Param((str, list), None, "target centroid ids (1-D int) or target embeddings (2-D float, "
                         "e.g. DataComp's in1k_clip_vit_l14_{0..4}.pt: their nearest centroids), .npy or .pt; "
                         "several files as a list or comma-separated", required=True),
        "embedding": Param(str, None, "image embedding column (default: {clip_stage}_image_embedding "
                           "when rows have it, else DataComp's l14_img)"),
        "clip_stage": Param(str, None, "id of a clip stage (model ViT-L-14) whose image embedding to use"),
        "lid_model": Param(str, None, "fastText language-id model (default: bundled lid.176.ftz)"),
        "batch_size": Param(int, 1024, "rows per nearest-centroid search", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
        "mode": Param(str, "filter", "filter: drop rows outside the target clusters (DataComp); annotate: "
                      "drop nothing, record {id}_pass = 1.0 when the row passes DataComp's image_based "
                      "filter, else 0.0 (HYPE's ImageNet-cluster term c_IN, a fused_rank input)",
                      choices=("filter", "annotate"), hash_at_default=False),
    }

    def verdict_columns(self) -> tuple[str, ...]:
        return (self.pass_column,) if self.p.mode == "annotate" else ()

    @property
    def pass_column(self) -> str:
        return f"{self.id}_pass"

    def embedding_columns(self) -> list[str]:
        """Where the image embedding is looked for, in order."""
        if self.p.embedding:
            return [self.p.embedding]
        return ([f"{self.p.clip_stage}_image_embedding"] if self.p.clip_stage else []) + [DATACOMP_L14_IMG]

    def needs(self):
        return (need(CAPTION), need(*self.embedding_columns(), what="the L/14 image embedding"))

    def embedding_of(self, row: dict) -> np.ndarray:
        cols = self.embedding_columns()
        for col in cols:
            value = row.get(col)
            if value is not None:
                return np.asarray(value, dtype=np.float32)
        raise UserError(f"image_based stage {self.id!r}: rows have no image embedding "
                        f"(looked for {', '.join(cols)}); set embedding or clip_stage")

    def caption_reason(self, row: dict) -> str | None:
        return image_based_caption_reason(row.get(CAPTION), self.row_language(row))

    def target_clusters(self) -> TargetClusters:
        """The centroid index and target ids of this stage's files, loaded once per process."""
        return TargetClusters(centroid_index(self.p.centroids),
                              target_ids(self.p.centroids, self.p.targets), source=str(self.p.targets))

    row_wise = True     # caption pre-filter and nearest centroid: each row on its own

    def batch_verdicts(self, rows: list[dict]) -> list[tuple[str, Verdict]]:
        """Verdicts for a batch of alive rows: caption pre-filter, then one centroid search."""
        verdicts = target_cluster_verdicts(rows, self.caption_reason, self.embedding_of, self.target_clusters)
        if self.p.mode == "filter":
            return verdicts
        failed = {token for token, _ in verdicts}
        return [(token, Verdict(columns={self.pass_column: 0.0 if token in failed else 1.0}))
                for token in (row_token(r) for r in rows)]

    def verdict_reasons_array(self, part, alive):
        """``batch_verdicts`` on a columnar part: the caption pre-filter on columns, then one
        ``TargetClusters.hits`` search of the rows that pass it (the search is batch-independent)."""
        if self.p.mode != "filter":
            return None
        out = np.full(part.n, None, dtype=object)
        langs, captions, chars = self.language_array(part, alive), part.captions(), part.caption_chars()
        english = alive & (langs == "en")
        out[alive & ~english] = "not_english"
        idx = np.flatnonzero(english)
        tokens = np.fromiter((fasttext_token_count(captions[i]) for i in idx), np.int64, len(idx))
        short = (tokens <= 1) | (chars[idx] <= 5)
        out[idx[short]] = "caption_too_short"
        searched = idx[~short]
        if len(searched):
            matrix = next((m for m in (part.embedding(c, searched) for c in self.embedding_columns())
                           if m is not None), None)
            if matrix is None:
                return None         # the row path names the missing column in one line
            hit = self.target_clusters().hits(matrix)
            out[searched[~hit]] = MISS_REASON
        return out

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import NearestCentroidVerdicts

        return alive_rows | f"ImageBased[{self.id}]" >> NearestCentroidVerdicts(
            self.batch_verdicts, self.p.batch_size)

    def provenance(self) -> dict:
        from beam_filter.fsio import file_sha256, is_remote

        out = {"type": self.name, "params": self.config}
        files = {"centroids": [self.p.centroids] if self.p.centroids else [],
                 "targets": parse_target_paths(self.p.targets) if self.p.targets else []}
        for key, paths in files.items():
            sums = []
            for path in paths:
                if not is_remote(path):
                    try:
                        sums.append(file_sha256(path))
                    except OSError:
                        pass
            if sums:
                out[f"{key}_sha256"] = sums[0] if len(paths) == 1 else sums
        return out
