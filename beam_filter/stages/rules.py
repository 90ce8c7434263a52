"""Recipe stages for the cheap rules: caption, image size, language, uid subsets, exact dedup.

Each stage only adapts a pure function of ``beam_filter/rules`` (exact dedup:
``beam_filter/cluster/exact_dup.py``) to the phases: ``features`` for what needs
the sample at score time (language id), ``reason`` for per-row decisions in
select, ``verdicts`` for exact dedup, which needs groups of rows
(``transforms/cluster.ExactDuplicates``). Rows from DataComp metadata
(``select --metadata``) have no ``lang`` column; the language stages then
compute it in ``reason`` from the caption, so the same recipe works on scored
shards and on metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from beam_filter.records import CAPTION, HEIGHT, LANG, LANG_SCORE, SHA256, UID, WIDTH
from beam_filter.process_cache import once_per_process
from beam_filter.columns import need
from beam_filter.registry import GroupStage, Param, RuleStage, register
from beam_filter.rules import caption as cap
from beam_filter.rules.datacomp import basic_filter_reason, basic_filter_reasons
from beam_filter.rules.image import ASPECT_ENDS, image_size_reason, image_size_reasons, width_height_reason
from beam_filter.rules.language import detect_language, detect_language_cld3, language_reason
from beam_filter.rules.uid_subset import MODES as UID_SUBSET_MODES, uid_subset_copies, uid_subset_reason


def _positive(v) -> bool:
    return v is None or v > 0


def _non_negative(v) -> bool:
    return v is None or v >= 0


def _lang_columns(stage_id: str, custom_model: bool) -> tuple[str, str]:
    """``lang``/``lang_score`` for the default lid.176 model, stage-scoped names otherwise.

    Two stages with different models must not overwrite each other's column.
    """
    if not custom_model:
        return LANG, LANG_SCORE
    return f"{stage_id}_lang", f"{stage_id}_lang_score"


class FastTextLanguage:
    """Mixin of the stages that need fastText lid.176's label: computes it once per sample.

    ``features`` writes ``lang``/``lang_score`` (or stage-scoped columns for a custom
    ``lid_model``); ``row_language`` reads it back in select, or detects it from the
    caption for DataComp metadata rows, which were never scored. Subclasses declare a
    ``lid_model`` parameter.
    """

    score_params = ("lid_model",)

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self._lang_col, self._score_col = _lang_columns(stage_id, bool(self.p.lid_model))

    def _detect(self, text):
        return detect_language(text, self.p.lid_model)

    def feature_columns(self) -> tuple[str, ...]:
        return (self._lang_col, self._score_col)

    def features(self, sample) -> dict:
        lang, score = self._detect(sample.caption)
        return {self._lang_col: lang, self._score_col: score}

    def row_language(self, row: dict) -> str | None:
        return row_language(row, self._lang_col, self._detect)

    def language_array(self, part, where=None):
        """``row_language`` of the rows of a columnar part in the mask ``where`` (others: None),
        detected once per part for every stage that asks (columnar.PartColumns.languages)."""
        return part.languages(self._lang_col, self.p.lid_model, where)


def row_language(row: dict, col: str, detect) -> str | None:
    """The row's language label; metadata rows (nothing scored) get it computed from the caption."""
    lang = row.get(col)
    if lang is None:
        lang = detect(row.get(CAPTION))[0]
    return lang


@register
class DataCompBasic(FastTextLanguage, RuleStage):
    """DataComp basic_filter: English (fastText), caption > 2 words and > 5 chars, size >= 200, aspect <= 3."""

    name = "datacomp_basic"
    description = "DataComp's basic_filter baseline (rules/datacomp.py)"
    params = {
        "lid_model": Param(str, None, "fastText language-id model (default: bundled lid.176.ftz; "
                           "DataComp used lid.176.bin)"),
        "min_words": Param(int, 2, "keep if the caption has MORE than this many words (str.split)",
                           check=_non_negative, check_msg="must be >= 0"),
        "min_chars": Param(int, 5, "keep if the caption has MORE than this many characters",
                           check=_non_negative, check_msg="must be >= 0"),
        "min_side": Param(int, 200, "keep if min(width, height) >= this", check=_non_negative,
                          check_msg="must be >= 0"),
        "max_aspect": Param(float, 3.0, "keep if max/min side <= this", check=_positive,
                            check_msg="must be > 0"),
    }
    def needs(self):
        # The language comes from the `lang` feature, or from the caption on metadata rows.
        return (need(CAPTION), need(WIDTH), need(HEIGHT))

    def reason(self, row: dict, info: Any = None) -> str | None:
        return basic_filter_reason(
            row.get(CAPTION), self.row_language(row),
            row.get(WIDTH), row.get(HEIGHT), min_words=self.p.min_words,
            min_chars=self.p.min_chars, min_side=self.p.min_side, max_aspect=self.p.max_aspect)

    def reason_array(self, part, alive, info: Any = None):
        width, height = part.sides(WIDTH), part.sides(HEIGHT)
        if width is None or height is None:
            return None
        return basic_filter_reasons(self.language_array(part, alive), part.caption_words(), part.caption_chars(),
                                    width, height, min_words=self.p.min_words, min_chars=self.p.min_chars,
                                    min_side=self.p.min_side, max_aspect=self.p.max_aspect)


@register
class CaptionLength(RuleStage):
    """Inclusive caption length bounds in characters and words (str.split)."""

    name = "caption_length"
    description = "keep captions with min <= length <= max (chars and/or words)"
    params = {
        "min_chars": Param(int, None, "keep if len(caption) >= this", check=_non_negative,
                           check_msg="must be >= 0"),
        "max_chars": Param(int, None, "keep if len(caption) <= this", check=_non_negative,
                           check_msg="must be >= 0"),
        "min_words": Param(int, None, "keep if len(caption.split()) >= this", check=_non_negative,
                           check_msg="must be >= 0"),
        "max_words": Param(int, None, "keep if len(caption.split()) <= this", check=_non_negative,
                           check_msg="must be >= 0"),
    }

    def needs(self):
        return (need(CAPTION),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return cap.caption_length_reason(row.get(CAPTION), self.p.min_chars, self.p.max_chars,
                                         self.p.min_words, self.p.max_words)

    def reason_array(self, part, alive, info: Any = None):
        chars, words = part.caption_chars(), part.caption_words()
        p = self.p
        out = np.full(part.n, None, dtype=object)
        too_long = np.zeros(part.n, bool)
        too_short = np.zeros(part.n, bool)
        if p.max_chars is not None:
            too_long |= chars > p.max_chars
        if p.max_words is not None:
            too_long |= words > p.max_words
        if p.min_chars is not None:
            too_short |= chars < p.min_chars
        if p.min_words is not None:
            too_short |= words < p.min_words
        out[too_long] = "caption_too_long"
        out[too_short] = "caption_too_short"        # checked first by caption_length_reason
        return out


@register
class ImageSize(RuleStage):
    """Inclusive bounds on the image's shorter/longer side and aspect ratio."""

    name = "image_size"
    description = "keep images with min(w,h) >= min_side, max(w,h) <= max_side, max/min <= max_aspect"
    params = {
        "min_side": Param(int, None, "keep if min(width, height) >= this", check=_non_negative,
                          check_msg="must be >= 0"),
        "max_side": Param(int, None, "keep if max(width, height) <= this", check=_positive,
                          check_msg="must be > 0"),
        "max_aspect": Param(float, None, "keep if max/min side <= this (symmetric, inclusive; for "
                            "Devil's open (0.33, 3.33) use min_width_height/max_width_height)",
                            check=lambda v: v is None or v >= 1, check_msg="must be >= 1"),
        "min_width_height": Param(float, None, "lower bound on width/height (tall images)",
                                  check=_positive, check_msg="must be > 0", hash_at_default=False),
        "max_width_height": Param(float, None, "upper bound on width/height (wide images)",
                                  check=_positive, check_msg="must be > 0", hash_at_default=False),
        "width_height_ends": Param(str, "[]", "which ends of [min, max]_width_height are kept: "
                                   "[] closed, () open, [) or (] half-open", choices=ASPECT_ENDS,
                                   hash_at_default=False),
    }

    def needs(self):
        return (need(WIDTH), need(HEIGHT))

    def reason(self, row: dict, info: Any = None) -> str | None:
        return (image_size_reason(row.get(WIDTH), row.get(HEIGHT), self.p.min_side,
                                  self.p.max_side, self.p.max_aspect)
                or width_height_reason(row.get(WIDTH), row.get(HEIGHT), self.p.min_width_height,
                                       self.p.max_width_height, self.p.width_height_ends))

    def reason_array(self, part, alive, info: Any = None):
        if self.p.min_width_height is not None or self.p.max_width_height is not None:
            return None     # the exact rational width/height bounds stay per row
        width, height = part.sides(WIDTH), part.sides(HEIGHT)
        if width is None or height is None:
            return None
        return image_size_reasons(width, height, self.p.min_side, self.p.max_side, self.p.max_aspect)


@register
class Language(RuleStage):
    """Keep captions whose detected language is in ``languages`` (fastText lid.176 or gcld3)."""

    name = "language"
    description = "language id filter (fastText lid.176 by default, gcld3 as in LAION-2B)"
    params = {
        "languages": Param(list, ["en"], "languages to keep (lid.176 / cld3 codes)"),
        "min_score": Param(float, None, "also require the top-1 probability >= this",
                           check=lambda v: v is None or 0 <= v <= 1, check_msg="must be in [0, 1]"),
        "model": Param(str, None, "fastText model path (default: bundled lid.176.ftz)"),
        "backend": Param(str, "fasttext", "which identifier", choices=("fasttext", "gcld3")),
    }
    score_params = ("model", "backend")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        if self.p.backend == "gcld3":
            self._lang_col, self._score_col = "lang_cld3", "lang_cld3_score"
        else:
            self._lang_col, self._score_col = _lang_columns(stage_id, bool(self.p.model))
        self._keep = frozenset(self.p.languages or ())

    def _detect(self, text):
        if self.p.backend == "gcld3":
            return detect_language_cld3(text)
        return detect_language(text, self.p.model)

    def feature_columns(self) -> tuple[str, ...]:
        return (self._lang_col, self._score_col)

    def features(self, sample) -> dict:
        lang, score = self._detect(sample.caption)
        return {self._lang_col: lang, self._score_col: score}

    def needs(self):
        return (need(self._lang_col, CAPTION, what="the language, or the caption to detect it from"),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        lang, score = row.get(self._lang_col), row.get(self._score_col)
        if lang is None:
            lang, score = self._detect(row.get(CAPTION))
        return language_reason(lang, score, self._keep, self.p.min_score)

    def reason_array(self, part, alive, info: Any = None):
        if self.p.backend != "fasttext" or self.p.min_score is not None:
            return None     # probabilities (and gcld3) stay per row: the batched call gives labels
        langs = part.languages(self._lang_col, self.p.model, alive)
        out = np.full(part.n, None, dtype=object)
        out[~np.isin(langs, list(self._keep))] = language_reason(None, None, self._keep)
        return out


@register
class JunkCaption(RuleStage):
    """Open-Qwen2VL: high-frequency junk captions and repetitive captions."""

    name = "junk_caption"
    description = ("drop Open-Qwen2VL's ~900 high-frequency junk captions (+ an optional list) and "
                   "captions whose unique-token ratio is not above min_unique_token_ratio")
    params = {
        "extra_list": Param(str, None, "file with more junk captions, one per line"),
        "min_unique_token_ratio": Param(float, 0.5, "keep if distinct/total tokens (split(' ')) "
                                        "is MORE than this; null disables",
                                        check=lambda v: v is None or 0 <= v < 1,
                                        check_msg="must be in [0, 1)"),
    }

    def needs(self):
        return (need(CAPTION),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        extra = cap.load_caption_list(self.p.extra_list) if self.p.extra_list else frozenset()
        return cap.junk_caption_reason(row.get(CAPTION), extra, self.p.min_unique_token_ratio)

    def reason_array(self, part, alive, info: Any = None):
        extra = cap.load_caption_list(self.p.extra_list) if self.p.extra_list else frozenset()
        return _per_caption(part, alive, lambda c: cap.junk_caption_reason(c, extra, self.p.min_unique_token_ratio))


@register
class CodeLikeCaption(RuleStage):
    """Open-Qwen2VL: drop captions that are file names, camera codes or ids."""

    name = "code_like_caption"
    description = "drop captions with no word-like token (IMG_1234.jpg, dsc0042, e4yf-4a68 ...)"
    params = {}

    def needs(self):
        return (need(CAPTION),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return cap.code_like_reason(row.get(CAPTION))

    def reason_array(self, part, alive, info: Any = None):
        return _per_caption(part, alive, cap.code_like_reason)


def _per_caption(part, alive, reason_of) -> np.ndarray:
    """A caption rule's reasons for the rows in ``alive`` of a columnar part (no row dicts built)."""
    captions = part.captions()
    out = np.full(part.n, None, dtype=object)
    for i in np.flatnonzero(alive):
        out[i] = reason_of(captions[i])
    return out


# ---- uid subsets ---------------------------------------------------------------------

def uid_set(path: str):
    """The UidSet of a DataComp subset file, loaded once per process (20M uids = 320 MB)."""
    from beam_filter.uids import UidSet, load_uids

    return once_per_process("uid_set", path, lambda: UidSet(load_uids(path)))


@register
class UidSubset(RuleStage):
    """Keep (or drop) the uids listed in a DataComp subset file (e.g. a DFN inds file)."""

    name = "uid_subset"
    description = "keep or drop rows whose uid is in a DataComp uids .npy"
    params = {
        "path": Param(str, None, "DataComp subset file (sorted u8,u8 .npy or raw memmap)",
                      required=True),
        "mode": Param(str, "keep", "keep: keep only listed uids; drop: drop listed uids",
                      choices=UID_SUBSET_MODES),
        "copies": Param(bool, True, "keep mode: a uid listed k times is written k times (DataComp's "
                        "resharder); false: once", hash_at_default=False),
    }

    def needs(self):
        return (need(UID),)

    def reason(self, row: dict, info: Any = None) -> str | None:
        return uid_subset_reason(row.get(UID) in uid_set(self.p.path), self.p.mode)

    def copies(self, row: dict) -> int | None:
        return uid_subset_copies(uid_set(self.p.path).count(row.get(UID) or ""), self.p.mode,
                                 self.p.copies)

    def _counts(self, part) -> np.ndarray:
        """How many times each row's uid is listed, once per part (reason and copies both ask)."""
        def count():
            uids, listed = part.pylist(UID), uid_set(self.p.path)
            return np.fromiter((listed.count(u or "") for u in uids), np.int64, len(uids))
        return part.cached(("uid_subset", self.p.path), count)

    def reason_array(self, part, alive, info: Any = None):
        if part.pylist(UID) is None:
            return None
        listed = self._counts(part) > 0
        out = np.full(part.n, None, dtype=object)
        out[listed if self.p.mode == "drop" else ~listed] = uid_subset_reason(self.p.mode == "drop", self.p.mode)
        return out

    def copies_array(self, part, rows):
        counts = self._counts(part)[rows]
        return np.array([uid_subset_copies(int(c), self.p.mode, self.p.copies) or 1 for c in counts], np.int64)


# ---- exact dedup ---------------------------------------------------------------------

@register
class ExactDedup(GroupStage):
    """Drop byte-identical images (same sha256); the smallest uid survives (cluster/exact_dup.py).

    Selected by part, its transform sees slim rows: uid, shard, key and the sha256 (docs/memory.md)."""

    name = "exact_dedup"
    description = "exact duplicate removal by image sha256 (survivor = smallest uid)"
    params = {}

    def needs(self):
        return (need(SHA256, what="the image's sha256"),)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import ExactDuplicates

        return alive_rows | f"ExactDedup[{self.id}]" >> ExactDuplicates(SHA256)
