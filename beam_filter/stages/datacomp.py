"""DataComp's baselines beyond basic_filter and clip_score: laion2b, text_based, image_based.

Each rule is stated once, as a plain function at the top of this module, exactly as
DataComp's baselines.py applies it (mlfoundations/datacomp, baselines.py); the stage classes below
only adapt them to the score and select phases.

* ``laion2b``: CLIP ViT-B/32 score >= 0.28 AND gcld3 language ``en``
  (``NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000)``, newlines -> spaces).
* ``text_based``: fastText lid.176 ``en`` AND some caption word's first WordNet
  synset is an ImageNet-21k synset (``rules/wordnet.py``).
* ``image_based``: caption pre-filter (fastText ``en``, more than 1 fastText token,
  more than 5 characters), then the image embedding's nearest centroid (argmax inner
  product) must be a *target* centroid. ``centroids``: a (k, d) float .npy (DataComp:
  faiss k-means, 100,000 clusters on L/14 image features of the caption-filtered
  pool); ``targets``: an int .npy of target centroid ids. DataComp's targets are the
  centroids nearest to ImageNet-1k train image features; make them with
  :func:`target_centroids` (``np.save("targets.npy", target_centroids(C, imagenet_l14_feats))``).

A row fails with the first failing test in the order written above (DataComp only
ANDs masks). Where scores or embeddings come from: DataComp metadata rows carry
``clip_b32_similarity_score`` / ``l14_img``; on scored shards name the clip stage
that computed them (``clip_stage: clip_b32`` reads ``clip_b32_score``, ``clip_stage:
clip_l14`` reads ``clip_l14_image_embedding``). A row with the clip stage's column
uses it; otherwise the DataComp column is used, so one recipe serves both inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from beam_filter import fsio
from beam_filter.errors import UserError
from beam_filter.records import CAPTION, Verdict
from beam_filter.identity import row_token
from beam_filter.process_cache import once_per_process
from beam_filter.columns import need
from beam_filter.registry import GroupStage, Param, RuleStage, register
from beam_filter.rules.caption import caption_chars
from beam_filter.rules.language import detect_language_cld3, fasttext_token_count
from beam_filter.stages.rules import FastTextLanguage, row_language

LAION_THRESHOLD = 0.28
CLD3_LANG, CLD3_SCORE = "lang_cld3", "lang_cld3_score"   # same columns as `language` with gcld3
DATACOMP_B32 = "clip_b32_similarity_score"
DATACOMP_L14_IMG = "l14_img"

# ---- the rules, as DataComp applies them ---------------------------------------------------


def laion2b_reason(score, cld3_lang: str | None, threshold: float = LAION_THRESHOLD) -> str | None:
    """DataComp laion2b: keep when B/32 score >= threshold and gcld3 says ``en``."""
    if score is None or (isinstance(score, float) and math.isnan(score)) or float(score) < threshold:
        return "clip_score_below_threshold"
    if cld3_lang != "en":
        return "not_english"
    return None


def image_based_caption_reason(caption: str | None, lang: str | None) -> str | None:
    """DataComp image_based pre-filter: fastText ``en``, > 1 fastText token, > 5 characters."""
    if lang != "en":
        return "not_english"
    if fasttext_token_count(caption) <= 1 or caption_chars(caption) <= 5:
        return "caption_too_short"
    return None


def text_based_reason(caption: str | None, lang: str | None, wordnet_dir: str | None = None) -> str | None:
    """DataComp text_based: fastText ``en`` and an ImageNet-21k concept among the caption's words."""
    from beam_filter.rules.wordnet import caption_has_in21k_synset

    if lang != "en":
        return "not_english"
    if not caption_has_in21k_synset(caption, wordnet_dir):
        return "no_imagenet21k_concept"
    return None


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


# ---- per-process caches --------------------------------------------------------------------

def load_npy(path: str, what: str = "array") -> np.ndarray:
    """``np.load(path, allow_pickle=False)`` (local or gs://), once per process; ``what`` names it in errors."""
    return once_per_process("npy", path, lambda: fsio.load_npy(path, what))


def centroid_index(path: str) -> CentroidIndex:
    """The CentroidIndex of a centroid .npy, built once per process."""
    return once_per_process("centroid_index", path, lambda: CentroidIndex(load_npy(path, "centroids")))


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
        if laion2b_reason(score, "en", self.p.threshold) is not None:
            return "clip_score_below_threshold"
        return laion2b_reason(score, row_language(row, CLD3_LANG, detect_language_cld3), self.p.threshold)


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


@register
class ImageBased(FastTextLanguage, GroupStage):
    """DataComp image_based: caption pre-filter, then keep images whose nearest centroid is a target."""

    name = "image_based"
    description = ("DataComp image_based baseline: English, > 1 fastText token, > 5 chars, and the "
                   "image embedding's nearest centroid is one of the target (ImageNet-nearest) centroids")
    params = {
        "centroids": Param(str, None, "(k, d) float .npy of centroids (DataComp: 100k on L/14)", required=True),
        "targets": Param(str, None, "int .npy of target centroid ids (see target_centroids)", required=True),
        "embedding": Param(str, None, "image embedding column (default: {clip_stage}_image_embedding "
                           "when rows have it, else DataComp's l14_img)"),
        "clip_stage": Param(str, None, "id of a clip stage (model ViT-L-14) whose image embedding to use"),
        "lid_model": Param(str, None, "fastText language-id model (default: bundled lid.176.ftz)"),
        "batch_size": Param(int, 1024, "rows per nearest-centroid search", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
    }
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

    def batch_verdicts(self, rows: list[dict]) -> list[tuple[str, Verdict]]:
        """Verdicts for a batch of alive rows: caption pre-filter, then one centroid search."""
        out, searched = [], []
        for row in rows:
            why = self.caption_reason(row)
            if why is not None:
                out.append((row_token(row), Verdict(reason=why)))
            else:
                searched.append(row)
        if searched:
            index = centroid_index(self.p.centroids)
            targets = load_npy(self.p.targets, "image_based targets")
            if not np.issubdtype(targets.dtype, np.integer):
                raise UserError(f"image_based: {self.p.targets} must hold integer centroid ids, "
                                f"not {targets.dtype}")
            ids = index.search(np.stack([self.embedding_of(r) for r in searched]))
            hit = np.isin(ids, targets)
            out.extend((row_token(r), Verdict(reason="not_in_target_clusters"))
                       for r, ok in zip(searched, hit) if not ok)
        return out

    def verdicts(self, alive_rows):
        import apache_beam as beam

        return (alive_rows
                | f"{self.id}/Batch" >> beam.BatchElements(min_batch_size=min(64, self.p.batch_size),
                                                           max_batch_size=self.p.batch_size)
                | f"{self.id}/NearestCentroid" >> beam.FlatMap(self.batch_verdicts))

    def provenance(self) -> dict:
        from beam_filter.fsio import file_sha256, is_remote

        out = {"type": self.name, "params": self.config}
        for key in ("centroids", "targets"):
            path = getattr(self.p, key)
            if path and not is_remote(path):
                try:
                    out[f"{key}_sha256"] = file_sha256(path)
                except OSError:
                    pass
        return out
