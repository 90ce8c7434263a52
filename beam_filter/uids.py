"""DataComp subset files (``uids.npy``): uid strings <-> sorted ``u8,u8`` records.

A uid of up to 32 hex chars is left-padded to 32 and split into two uint64
words (high, low), exactly as DataComp's baselines and resharder do. Files are
numpy structured arrays sorted by (high, low), saved with ``np.save``; a raw
memmap of the same 16-byte records is accepted too. Membership tests use a
binary search over the sorted array, so a 20M-uid DFN subset costs 320 MB of
memory and O(log n) per lookup, with no Python set of strings.
"""

from __future__ import annotations

import io
import os

import numpy as np

from beam_filter import fsio
from beam_filter.errors import UserError

UID_DTYPE = np.dtype("u8,u8")


def uid_to_pair(uid: str) -> tuple[int, int]:
    u = uid.strip().lower().rjust(32, "0")
    if len(u) != 32:
        raise ValueError(f"uid longer than 32 hex chars: {uid!r}")
    return int(u[:16], 16), int(u[16:32], 16)


def uids_to_array(uids, sort: bool = True) -> np.ndarray:
    """Turn an iterable of uid strings (repeats allowed) into a ``u8,u8`` array."""
    uids = list(uids)
    arr = np.empty(len(uids), dtype=UID_DTYPE)
    if uids:
        pairs = [uid_to_pair(u) for u in uids]
        arr["f0"] = np.fromiter((p[0] for p in pairs), dtype=np.uint64, count=len(pairs))
        arr["f1"] = np.fromiter((p[1] for p in pairs), dtype=np.uint64, count=len(pairs))
    if sort:
        arr.sort(order=["f0", "f1"])
    return arr


def save_uids(path: str, arr: np.ndarray) -> None:
    """Write a sorted subset file the way DataComp's baselines.py does (``np.save``).

    Local or gs:// (fsio), written atomically; bytes are deterministic.
    """
    arr = np.ascontiguousarray(arr, dtype=UID_DTYPE)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    fsio.write_bytes_atomic(path, buf.getvalue())


UID_FILE = "a DataComp uid file (np.save of dtype u8,u8, or raw 16-byte records)"


def load_uids(path: str) -> np.ndarray:
    """Load a subset file: ``np.save`` output or a raw memmap of 16-byte records.

    Returns a sorted ``u8,u8`` array (sorted here if the file was not). A file that is
    neither (truncated, empty, another format) is a UserError naming it: it is the
    user's file, and numpy's own message does not say which file it was about.
    """
    arr = fsio.load_npy(path, "uid subset", expected=UID_FILE, mmap=True, raw_dtype=UID_DTYPE)
    if arr.dtype.names is None or len(arr.dtype.names) != 2 or arr.dtype.itemsize != 16:
        raise UserError(f"{path}: not a DataComp uid file (want dtype u8,u8, got {arr.dtype})")
    arr = np.asarray(arr).view(UID_DTYPE) if arr.dtype != UID_DTYPE else np.asarray(arr)
    if len(arr) > 1 and not _is_sorted(arr):
        arr = np.sort(arr, order=["f0", "f1"])
    return arr


def _is_sorted(arr: np.ndarray) -> bool:
    hi, lo = arr["f0"], arr["f1"]
    dh = hi[1:] >= hi[:-1]
    if not dh.all():
        return False
    same = hi[1:] == hi[:-1]
    return bool(np.all(~same | (lo[1:] >= lo[:-1])))


class UidSet:
    """Membership and multiplicity over a sorted uid array (binary search, no string set)."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr
        # A single sort key: searchsorted on a structured array compares field by field.

    def __len__(self) -> int:
        return len(self._arr)

    def count(self, uid: str) -> int:
        """How many times ``uid`` appears (DataComp writes a sample that many times)."""
        try:
            key = np.array([uid_to_pair(uid)], dtype=UID_DTYPE)
        except ValueError:
            return 0
        lo = np.searchsorted(self._arr, key[0], side="left")
        hi = np.searchsorted(self._arr, key[0], side="right")
        return int(hi - lo)

    def __contains__(self, uid: str) -> bool:
        return self.count(uid) > 0


def stable_uid(shard: str, key: str) -> str:
    """uid for a sample whose json has none: sha256 of ``basename(shard)/key``, 32 hex chars.

    Only the shard's basename is hashed so the uid does not change when a pool is
    moved from local disk to gs://.
    """
    import hashlib

    return hashlib.sha256(f"{os.path.basename(shard)}/{key}".encode()).hexdigest()[:32]
