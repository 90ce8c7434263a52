"""The rows that flow between phases, and the names of their columns.

Three shapes, matching the three phases (ARCHITECTURE.md):

``Sample``
    One sample read from a shard, *with* its bytes. Lives only inside the fused
    read -> features -> inference stage; never crosses a shuffle.
``row`` (a plain ``dict``)
    One sample's features and scores, *without* image bytes: what the score
    phase writes to ``scores/*.parquet`` and what select works on. Keys are the
    column names below plus model outputs (``<stage>_score`` ...).
``Decision``
    The row plus ``kept``, ``copies``, ``reason`` and ``stage``: one per input
    sample, written to ``decisions/*.parquet``.

Rows are dicts rather than classes so that a new rule adds a column without
touching this file, and so that rows pickle fast between Beam stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

# Identity and provenance of a sample.
UID = "uid"            # 32 hex chars: json "uid", else uids.stable_uid(shard, key)
SHARD = "shard"        # full path of the source tar
KEY = "key"            # the member-name prefix shared by key.jpg / key.txt / key.json
URL = "url"
# Cheap features, computed for every readable sample.
CAPTION = "caption"
CAPTION_CHARS = "caption_chars"   # len(caption)
CAPTION_WORDS = "caption_words"   # len(caption.split())  (DataComp's basic_filter count)
LANG = "lang"                     # fastText lid.176 top-1 label without __label__, e.g. "en"
LANG_SCORE = "lang_score"
WIDTH = "width"                   # json original_width when present, else image header
HEIGHT = "height"
IMAGE_FORMAT = "image_format"     # "jpeg" | "png" | "webp" | ...
IMAGE_BYTES = "image_bytes"       # size of the encoded image
SHA256 = "sha256"                 # sha256 hex of the encoded image bytes
# Set at read time when the sample cannot be scored at all.
READ_ERROR = "read_error"         # e.g. "corrupt_image", "missing_caption"; None when fine
# Set at read time when a sample is usable but something about it deserves a look
# (e.g. "duplicate_key": its key appeared earlier in the same shard, so it was renamed).
WARNING = "warning"
# Decision columns.
KEPT = "kept"
COPIES = "copies"
REASON = "reason"
STAGE = "stage"

DECISION_COLUMNS = (UID, SHARD, KEY, KEPT, COPIES, REASON, STAGE)


@dataclasses.dataclass
class Sample:
    """A sample as read from a tar: raw member bytes grouped by key.

    ``image`` is None when the sample has no image member. ``error`` is the first
    reason this sample cannot be used (set by the reader or by feature
    extraction); such samples still flow to the end so they get a decision row.
    """

    shard: str
    key: str
    uid: str
    image: bytes | None = None
    image_ext: str | None = None
    caption: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    warning: str | None = None     # see WARNING; never a reason to drop
    features: dict = dataclasses.field(default_factory=dict)
    # Raw members exactly as read (name suffix -> bytes), kept only where
    # byte-identical rewriting needs them (reshard).
    members: dict | None = None


class Verdict(NamedTuple):
    """What a global stage says about one row: drop it (reason), how many copies, and
    extra columns to record on the row (e.g. its cluster id, shown in the report)."""

    reason: str | None = None
    copies: int | None = None
    columns: dict | None = None


def new_row(sample: Sample) -> dict[str, Any]:
    """The score row of a sample: identity, features, no bytes.

    Always has a ``warning`` key (None by default), so every scores/decisions
    file has the column.
    """
    url = sample.meta.get("url") if isinstance(sample.meta, dict) else None
    row = {UID: sample.uid, SHARD: sample.shard, KEY: sample.key, URL: storable_text(url),
           CAPTION: sample.caption, READ_ERROR: sample.error, WARNING: sample.warning}
    row.update(sample.features)
    return row


def storable_text(value: Any) -> Any:
    """A string parquet can store: json may hold lone surrogates (``"\\ud800"``), which
    UTF-8 cannot encode; they become ``\\ud800`` escapes. Other values pass through."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value
