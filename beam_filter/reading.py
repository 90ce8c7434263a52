"""From a shard path to :class:`~beam_filter.records.Sample` objects with their common columns.

Pure Python (no Beam) so that the pipeline's reader DoFn, the plain-loop
benchmark and the tests all run exactly this code. Every sample found in a tar
becomes a Sample, usable or not: a sample that cannot be used carries
``error`` (its decision reason) instead of being skipped, so counts in equal
counts out. File-level damage is reported as a :class:`FileError` at the end of
the stream.

Reasons set here (``sample.error``, first found wins): ``unsafe_member_name``,
``no_regular_members`` (from the tar group, see tar_io), ``bad_json``,
``bad_uid``, ``missing_caption``, ``bad_caption_encoding``, ``missing_image``,
the image probe's ``corrupt_image`` / ``image_too_large``, ``truncated_shard``,
and ``unreadable_sample`` for anything unexpected while building one sample
(:func:`build_sample` never raises).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Iterator

from beam_filter import fsio
from beam_filter import records as R
from beam_filter.rules.caption import caption_chars, caption_words
from beam_filter.rules.image_header import probe_image
from beam_filter.tar_io import DUPLICATE_KEY, IMAGE_EXTS, ShardError, iter_tar_groups, printable_name
from beam_filter.uids import stable_uid

TRUNCATED_SAMPLE = "truncated_shard"   # reason of the sample a truncated tar cut in half
BAD_JSON = "bad_json"
BAD_UID = "bad_uid"
UNREADABLE_SAMPLE = "unreadable_sample"
MAX_SIDE = 2 ** 31                     # json original sizes above this are not believed

_UID = re.compile(r"[0-9a-fA-F]{1,32}")
_log = logging.getLogger(__name__)
_warned_unreadable = False


@dataclass(frozen=True)
class FileError:
    """A shard-level failure, listed in report.json under ``file_errors``."""

    shard: str
    error: str        # "not_a_tar" | "truncated_tar" | "damaged_tar" | "trailing_data" | "unreadable"
    detail: str

    def as_dict(self) -> dict:
        return {"shard": self.shard, "error": self.error, "detail": self.detail}


def read_shard(path: str, keep_members: bool = False) -> Iterator[Sample | FileError]:
    """Yield every sample of the tar at ``path``, then a FileError if the tar is damaged."""
    try:
        stream = fsio.open_read(path)
    except Exception as e:  # missing after matching, permission, transient gs error
        yield FileError(path, "unreadable", f"{type(e).__name__}: {e}")
        return
    with stream:
        try:
            for key, members in iter_tar_groups(stream):
                yield build_sample(path, key, members, keep_members)
        except ShardError as e:
            if e.partial_key is not None and e.kind in ("truncated_tar", "damaged_tar"):
                # The sample being read when the data ended: it exists, so it gets a row.
                key = printable_name(e.partial_key)
                s = R.Sample(shard=path, key=key, uid=stable_uid(path, key), error=TRUNCATED_SAMPLE)
                s.features.update(_empty_features())
                yield s
            yield FileError(path, e.kind, e.detail)


def build_sample(shard: str, key: str, members: dict[str, bytes], keep_members: bool = False) -> Sample:
    """Parse one sample's members; the first problem found becomes ``sample.error``.

    ``members`` maps extensions *as written in the tar* to bytes (a
    :class:`~beam_filter.tar_io.Members` from iter_tar_groups, or a plain dict).
    Extensions are looked up case-insensitively (``KEY.JPG`` is the image); when
    several members match (``k.jpg`` and ``k.JPG``), the first in tar order wins.

    Identity: ``uid`` is the json ``uid`` (lowercased) when it is 1 to 32 hex
    characters (DataComp left-pads shorter ones); a json ``uid`` that is anything
    else (not a string, empty, too long, not hex) drops the sample with
    ``bad_uid`` and the row gets ``uids.stable_uid(shard, key)``, as a sample
    without one does. Keys that are not safe to print (see tar_io.printable_name)
    are escaped in the row.

    Never raises: any unexpected failure on this one sample gives a row with
    reason ``unreadable_sample`` and the stable uid, instead of a crashed bundle.
    """
    try:
        return _build_sample(shard, key, members, keep_members)
    except Exception as e:  # noqa: BLE001 - one bad record must never take the job down
        global _warned_unreadable
        if not _warned_unreadable:
            _warned_unreadable = True
            _log.warning("unreadable sample %r in %s (%s: %s); it is dropped as %s (logged once)",
                         key, shard, type(e).__name__, e, UNREADABLE_SAMPLE)
        return _failed_sample(shard, key, UNREADABLE_SAMPLE)


def _failed_sample(shard: str, key: str, error: str) -> Sample:
    key = printable_name(key)
    s = R.Sample(shard=shard, key=key, uid=stable_uid(printable_name(shard), key), error=error)
    s.features.update(_empty_features())
    return s


def _build_sample(shard: str, key: str, members: dict[str, bytes], keep_members: bool) -> Sample:
    key = printable_name(key)
    error = getattr(members, "problem", None)      # unsafe_member_name, no_regular_members
    warning = DUPLICATE_KEY if getattr(members, "renamed", False) else None
    by_ext: dict[str, bytes] = {}
    for ext, data in members.items():              # first member of each extension, any case
        by_ext.setdefault(ext.lower(), data)

    meta: dict = {}
    raw_json = by_ext.get("json")
    if raw_json is not None:
        try:
            meta = json.loads(raw_json)
            if not isinstance(meta, dict):
                raise ValueError("json is not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested too deep
            meta, error = {}, error or BAD_JSON
    uid = meta.get("uid")
    if uid is None:
        uid = stable_uid(shard, key)
    elif isinstance(uid, str) and _UID.fullmatch(uid):
        uid = uid.lower()
    else:
        uid, error = stable_uid(shard, key), error or BAD_UID

    caption = None
    raw_txt = by_ext.get("txt")
    if raw_txt is None:
        error = error or "missing_caption"
    else:
        try:
            caption = raw_txt.decode("utf-8")
        except UnicodeDecodeError:
            error = error or "bad_caption_encoding"

    image_ext = next((e for e in IMAGE_EXTS if e in by_ext), None)
    image = by_ext.get(image_ext) if image_ext else None
    features = _empty_features()
    if image is None:
        error = error or "missing_image"
    else:
        probe = probe_image(image)
        features[R.IMAGE_FORMAT] = probe.format
        features[R.IMAGE_BYTES] = len(image)
        features[R.SHA256] = hashlib.sha256(image).hexdigest()
        w, h = _original_size(meta)
        features[R.WIDTH] = w if w is not None else probe.width
        features[R.HEIGHT] = h if h is not None else probe.height
        if probe.error:
            error = error or probe.error
    if caption is not None:
        features[R.CAPTION_CHARS] = caption_chars(caption)
        features[R.CAPTION_WORDS] = caption_words(caption)
    sample = R.Sample(shard=shard, key=key, uid=uid, image=image, image_ext=image_ext,
                      caption=caption, meta=meta, error=error, warning=warning, features=features,
                      members=dict(members) if keep_members else None)
    return sample


def _original_size(meta: dict) -> tuple[int | None, int | None]:
    """DataComp measures image size from json original_width/height, before img2dataset's resize.

    Only numbers from 1 to MAX_SIDE are believed (json gives inf for 1e400 and
    accepts NaN; a bool is an int in Python); otherwise the image header's size is used.
    """
    w, h = meta.get("original_width"), meta.get("original_height")
    if _plausible_side(w) and _plausible_side(h):
        return int(w), int(h)
    return None, None


def _plausible_side(v) -> bool:
    # Compared as numbers: False for inf and NaN, and no float overflow for huge ints.
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE


def _empty_features() -> dict:
    return {R.CAPTION_CHARS: None, R.CAPTION_WORDS: None, R.WIDTH: None, R.HEIGHT: None,
            R.IMAGE_FORMAT: None, R.IMAGE_BYTES: None, R.SHA256: None}


Sample = R.Sample
