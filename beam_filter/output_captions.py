"""Which caption a curated output shard carries: the raw alt-text, a generated one, or Nguyen et al.'s mix.

By default reshard copies every member byte for byte. A recipe that lists the
``output_caption`` stage (``stages/captions.py``) chooses, per kept row, a caption and
records it in the decisions (:data:`OUTPUT_CAPTION`, and :data:`CAPTION_CHOICE` =
``raw`` | ``generated``); the reshard writer then rewrites only the ``.txt`` and the
json's ``caption`` of the rows whose choice is a generated caption, keeping the source
caption in the json as ``original_caption``. A row whose choice is the raw caption
stays byte-identical.

The mixing rule of "Improving multimodal datasets with image captioning" (Nguyen et
al. 2023): keep the raw caption where the raw pair passes the CLIP cut, else the
generated one where *that* pair passes, else drop the sample. Pure functions, no Beam.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

OUTPUT_CAPTION = "output_caption"      # the caption written to the output shard; None: the source's own
CAPTION_CHOICE = "caption_choice"      # "raw" | "generated"
RAW, GENERATED = "raw", "generated"
MODES = ("raw", "generated", "mix")
NO_PAIR_PASSES = "caption_mix_no_pair_passes"
NO_GENERATED = "no_generated_caption"


class Choice(NamedTuple):
    """What the rule says about one row: the choice, the caption to write (None = unchanged), or a reason."""

    choice: str | None
    caption: str | None = None
    reason: str | None = None


def _passes(score, threshold: float) -> bool:
    if score is None:
        return False
    try:
        value = float(score)
    except (TypeError, ValueError):
        return False
    return not math.isnan(value) and value >= threshold


def choose_caption(mode: str, generated: str | None, raw_score=None, generated_score=None,
                   raw_threshold: float = 0.0, generated_threshold: float = 0.0,
                   drop_without_generated: bool = False) -> Choice:
    """The caption rule for one row.

    ``raw``: the source caption. ``generated``: the generated caption; a row without one
    keeps its raw caption (or is dropped with ``no_generated_caption`` when
    ``drop_without_generated``). ``mix``: raw when ``raw_score >= raw_threshold``, else the
    generated caption when ``generated_score >= generated_threshold``, else dropped with
    ``caption_mix_no_pair_passes``.
    """
    has_generated = bool(generated and generated.strip())
    if mode == RAW:
        return Choice(RAW)
    if mode == GENERATED:
        if has_generated:
            return Choice(GENERATED, generated)
        return Choice(None, None, NO_GENERATED) if drop_without_generated else Choice(RAW)
    if mode != "mix":
        raise ValueError(f"unknown caption mode {mode!r}")
    if _passes(raw_score, raw_threshold):
        return Choice(RAW)
    if has_generated and _passes(generated_score, generated_threshold):
        return Choice(GENERATED, generated)
    return Choice(None, None, NO_PAIR_PASSES)


def rewrite_members(members: dict, caption: str) -> dict:
    """Members of one sample carrying ``caption``: ``.txt`` replaced, the json's ``caption`` set and the
    source caption kept as ``original_caption`` (key order kept, so the bytes are deterministic).

    A json that does not parse as an object is left as it is (the reader never kept such a
    sample anyway). Extensions are matched case-insensitively, written as they were.
    """
    out = dict(members)
    original = None
    for ext, data in members.items():
        if ext.lower() == "txt":
            try:
                original = data.decode("utf-8")
            except UnicodeDecodeError:
                original = data.decode("utf-8", "replace")
            out[ext] = caption.encode("utf-8")
    for ext, data in members.items():
        if ext.lower() != "json":
            continue
        try:
            meta = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if not isinstance(meta, dict):
            continue
        if original is None and isinstance(meta.get("caption"), str):
            original = meta["caption"]
        meta["original_caption"] = original
        meta["caption"] = caption
        out[ext] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    if not any(e.lower() == "txt" for e in members):
        out["txt"] = caption.encode("utf-8")
    return out
