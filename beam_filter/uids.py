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
    """Turn uid strings (repeats allowed) into a ``u8,u8`` array, equal to :func:`uid_to_pair` of each.

    ``uids``: an iterable of strings or an Arrow string array (a decisions column, read
    as is). Plain hex uids of up to 32 chars, the DataComp form, are decoded in numpy
    (:func:`_hex_pairs`): a Python ``uid_to_pair`` per uid cost 2.8 s of a 1.28M-row
    ``select``. Anything else (whitespace, a null, ``0x``, too long) goes through
    :func:`uid_to_pair` itself, so results and errors stay exactly what it gives.
    """
    import pyarrow as pa

    if not isinstance(uids, (pa.Array, pa.ChunkedArray)):
        uids = list(uids)
        try:
            uids = pa.array(uids, type=pa.string())
        except (pa.ArrowException, TypeError, ValueError):   # not all strings: the per-uid path
            return _pairs_array([uid_to_pair(u) for u in uids], sort)
    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks() if uids.num_chunks else pa.array([], pa.string())
    if not (pa.types.is_string(uids.type) or pa.types.is_large_string(uids.type)):
        return _pairs_array([uid_to_pair(u) for u in uids.to_pylist()], sort)
    arr = np.empty(len(uids), dtype=UID_DTYPE)
    if len(uids):
        _fill_pairs(uids, arr)
    if sort:
        arr = sort_uids(arr)
    return arr


_PLAIN_HEX = "^[0-9A-Fa-f]{0,32}$"        # decoded in numpy; anything else: uid_to_pair
_NIBBLE = np.zeros(256, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i
    _NIBBLE[ord(chr(_c).upper())] = _i


def _fill_pairs(uids, arr: np.ndarray) -> None:
    """``arr[i] = uid_to_pair(uids[i])``: plain hex uids in numpy, the rest one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(pc.match_substring_regex(uids, _PLAIN_HEX), False)
    n_plain = pc.sum(plain).as_py() or 0
    if n_plain == len(uids):
        arr["f0"], arr["f1"] = _hex_pairs(uids)
        return
    mask = np.asarray(plain.to_numpy(zero_copy_only=False), dtype=bool)
    other = np.flatnonzero(~mask)
    pairs = [uid_to_pair(u) for u in uids.take(pa.array(other)).to_pylist()]   # raises as it always did
    arr["f0"][other] = np.fromiter((p[0] for p in pairs), np.uint64, len(pairs))
    arr["f1"][other] = np.fromiter((p[1] for p in pairs), np.uint64, len(pairs))
    if n_plain:
        idx = np.flatnonzero(mask)
        arr["f0"][idx], arr["f1"][idx] = _hex_pairs(uids.filter(pa.array(mask)))


def _hex_pairs(uids) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) words of plain-hex uids (``_PLAIN_HEX``, no nulls), left-padded to 32 with '0'.

    Every padded uid is 32 ASCII bytes, so the Arrow data buffer is one (n, 32) byte
    matrix: a lookup table turns bytes into nibbles, pairs of nibbles into bytes, and
    each 8-byte half read big-endian is the word ``int(half, 16)`` gives.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    padded = pc.utf8_lpad(uids, 32, "0")
    n = len(padded)
    offsets_buf, data_buf = padded.buffers()[1], padded.buffers()[2]
    off_type = np.dtype(np.int64 if pa.types.is_large_string(padded.type) else np.int32)
    start = int(np.frombuffer(offsets_buf, off_type, count=1, offset=padded.offset * off_type.itemsize)[0])
    raw = np.frombuffer(data_buf, np.uint8, count=32 * n, offset=start).reshape(n, 32)
    nib = _NIBBLE[raw]
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    words = np.ascontiguousarray(packed).view(">u8")
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)


def _pairs_array(pairs: list[tuple[int, int]], sort: bool) -> np.ndarray:
    arr = np.empty(len(pairs), dtype=UID_DTYPE)
    if pairs:
        arr["f0"] = np.fromiter((p[0] for p in pairs), dtype=np.uint64, count=len(pairs))
        arr["f1"] = np.fromiter((p[1] for p in pairs), dtype=np.uint64, count=len(pairs))
    return sort_uids(arr) if sort else arr


def sort_uids(arr: np.ndarray) -> np.ndarray:
    """``arr`` sorted by (high, low): the order of ``arr.sort(order=["f0", "f1"])``, faster.

    Records are plain 16-byte values, so any correct sort gives the same bytes.
    """
    return arr[uid_order(arr)] if len(arr) > 1 else arr.copy()


def uid_order(arr: np.ndarray) -> np.ndarray:
    """Indices that sort ``arr`` by (high, low).

    High words are almost always distinct, so one argsort of them usually settles the
    order (a tenth of numpy's structured-record sort); ``lexsort`` on both words when not.
    """
    order = np.argsort(arr["f0"], kind="stable")
    hi = arr["f0"][order]
    if (hi[1:] == hi[:-1]).any():
        order = np.lexsort((arr["f1"], arr["f0"]))
    return order


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
    if fsio.is_remote(path):
        path = machine_copy(path)
    arr = fsio.load_npy(path, "uid subset", expected=UID_FILE, mmap=True, raw_dtype=UID_DTYPE)
    if arr.dtype.names is None or len(arr.dtype.names) != 2 or arr.dtype.itemsize != 16:
        raise UserError(f"{path}: not a DataComp uid file (want dtype u8,u8, got {arr.dtype})")
    arr = np.asarray(arr).view(UID_DTYPE) if arr.dtype != UID_DTYPE else np.asarray(arr)
    if len(arr) > 1 and not _is_sorted(arr):
        arr = np.sort(arr, order=["f0", "f1"])
    return arr


def machine_copy(path: str, directory: str | None = None) -> str:
    """A (remote) subset file copied once per machine into the temp directory, to be memory-mapped
    from there by every process of the machine, as DataComp's resharder copies it locally too.

    Memory is then one copy per worker machine (the page cache: 16 bytes per uid, 320 MB for a
    20M-uid DFN file) however many SDK processes it runs, instead of one read per process.
    The copy is named by the path, size and modification time, so a replaced file is copied
    again; it is written atomically (concurrent processes may both copy; one rename wins).
    A missing file is returned as is (the loader says it is missing).
    """
    import hashlib
    import shutil
    import tempfile
    import threading

    parent, name = path.rstrip("/").rsplit("/", 1) if "/" in path.rstrip("/") else (".", path)
    info = next((f for f in fsio.list_dir(parent, name) if f.path.rstrip("/").rsplit("/", 1)[-1] == name), None)
    if info is None:
        return path
    key = hashlib.sha256(f"{path}\0{info.size}\0{info.mtime}".encode()).hexdigest()[:24]
    local = os.path.join(directory or tempfile.gettempdir(), f"beam_filter_uids_{key}.npy")
    if os.path.exists(local) and os.path.getsize(local) == info.size:
        return local
    tmp = f"{local}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with fsio.open_read(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


def _is_sorted(arr: np.ndarray) -> bool:
    hi, lo = arr["f0"], arr["f1"]
    dh = hi[1:] >= hi[:-1]
    if not dh.all():
        return False
    same = hi[1:] == hi[:-1]
    return bool(np.all(~same | (lo[1:] >= lo[:-1])))


class UidSet:
    """Membership and multiplicity over a sorted uid array (binary search, no string set).

    The search runs on the high words (a strided uint64 view: no copy, 16 bytes per uid in
    all), then walks the few records sharing that high word: about 100k lookups per second
    per core on a 20M-uid file (benchmarks/bench_uid_subset.py), where numpy's structured
    comparison managed a fifth of that. The last answer is remembered, since a stage asks
    twice per row (is it listed, how many copies).
    """

    def __init__(self, arr: np.ndarray):
        self._arr = arr
        words = np.ascontiguousarray(arr).view(np.uint64).reshape(-1, 2) if len(arr) else np.zeros((0, 2), np.uint64)
        self._hi, self._lo = words[:, 0], words[:, 1]
        self._last: tuple[str, int] | None = None

    def __len__(self) -> int:
        return len(self._arr)

    def count(self, uid: str) -> int:
        """How many times ``uid`` appears (DataComp writes a sample that many times)."""
        last = self._last
        if last is not None and last[0] == uid:
            return last[1]
        try:
            hi, lo = uid_to_pair(uid)
        except (ValueError, AttributeError):
            return 0
        his, los, n = self._hi, self._lo, len(self._hi)
        i = int(his.searchsorted(np.uint64(hi), "left"))
        found = 0
        while i < n and int(his[i]) == hi:
            v = int(los[i])
            if v == lo:
                found += 1
            elif v > lo:
                break
            i += 1
        self._last = (uid, found)
        return found

    def __contains__(self, uid: str) -> bool:
        return self.count(uid) > 0


def stable_uid(shard: str, key: str) -> str:
    """uid for a sample whose json has none: sha256 of ``basename(shard)/key``, 32 hex chars.

    Only the shard's basename is hashed so the uid does not change when a pool is
    moved from local disk to gs://. A named source's shard keeps its tag in the basename
    (``00000.tar#cc12m``, sources.py), so two sources' ``00000.tar`` give different uids.
    """
    import hashlib

    return hashlib.sha256(f"{os.path.basename(shard)}/{key}".encode()).hexdigest()[:32]
