"""Near-duplicate images by perceptual hash: pHash, LSH banding, components, survivors.

Pure functions; ``transforms/cluster.NearDedup`` runs the same steps as a Beam graph,
calling the per-element rules here (``band_keys``, ``chunk_keys``, ``close_value_pairs``,
``best_member``, ``member_verdicts``, ``contamination_reason``).

pHash (the classic DCT hash, as in the ``imagehash`` package): greyscale, resize
to 32x32 (Lanczos), 2-D DCT-II, keep the 8x8 lowest frequencies, bit = coefficient
greater than their median; 64 bits packed row-major, first bit most significant.
For speed a JPEG is decoded in PIL *draft* mode (the decoder's DCT scaling gives
an image of at least 64x64 pixels without decoding the full resolution), which
makes decoding several times cheaper; pool and eval images use the same
function, so hashes stay comparable. The value is stored as a signed int64 (the
same 64 bits) so it fits a parquet int64 column.

Matching: two images are near-duplicates when the Hamming distance of their
hashes is ``<= tolerance``. Candidates come from LSH banding: the 64 bits are cut
into ``bands`` bands, and only hashes that agree exactly on at least one band are
compared. By pigeonhole every pair within ``tolerance < bands`` differing bits
agrees on some band, so banding loses nothing there; beyond that a pair is lost
only if its differing bits hit every band.

Groups are transitive: pairs are joined by union-find into components, and one
survivor per component is kept: highest ``quality`` (when given), then smallest
uid. Every other member is dropped as ``near_duplicate_of:<survivor uid>``, even
when it is within tolerance only of another member (a chain a~b~c is one group).

Bounded buckets: a band bucket holding more than ``bucket_cap`` distinct hashes
is split into chunks by hash of value and every pair of chunks is compared in
its own group of at most ``bucket_cap`` hashes (a block-pair join), so no group
exceeds the cap and no candidate pair is lost; the work stays quadratic in the
size of such a bucket. Identical hashes are collapsed before banding (components
are over distinct hash values), so a million copies of one blank image make one
entry, not a million.
"""

from __future__ import annotations

import io
import math
from typing import Iterable, Sequence

import numpy as np

from beam_filter.cluster.sampling import uid_hash64
from beam_filter.identity import token_uid
from beam_filter.records import Verdict

REASON_PREFIX = "near_duplicate_of:"
CONTAMINATION_PREFIX = "eval_contamination:"
HASH_BITS = 64
_SIZE = 32
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(_SIZE)


def phash_image(img) -> int:
    """64-bit pHash of a PIL image, as a signed int64 value."""
    from PIL import Image

    g = img.convert("L").resize((_SIZE, _SIZE), Image.Resampling.LANCZOS)
    px = np.asarray(g, dtype=np.float64)
    low = (_DCT @ px @ _DCT.T)[:_LOW, :_LOW]
    bits = (low > np.median(low)).ravel()
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return to_signed(value)


def phash_bytes(data: bytes, draft: bool = True) -> int:
    """pHash of encoded image bytes; raises on undecodable data (callers map it to a read error)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if draft and img.format == "JPEG":
            img.draft("L", (2 * _SIZE, 2 * _SIZE))
        return phash_image(img)


def to_signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= (1 << 63) else v


def as_u64(values) -> np.ndarray:
    """int64 (signed) hashes -> uint64 view with the same bits."""
    return np.asarray(values, dtype=np.int64).view(np.uint64)


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 hash arrays (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(as_u64(a), as_u64(b))).astype(np.int64)


def check_bands(bands: int) -> int:
    if bands < 1 or HASH_BITS % bands:
        raise ValueError(f"bands must divide 64, got {bands}")
    return HASH_BITS // bands


def band_values(h: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) band values of uint64 hashes; band 0 holds the most significant bits."""
    width = check_bands(bands)
    h = as_u64(h)
    mask = np.uint64((1 << width) - 1)
    return np.stack([(h >> np.uint64(HASH_BITS - width * (b + 1))) & mask for b in range(bands)], axis=1)


def band_keys(value: int, bands: int) -> list[tuple[int, int]]:
    """``(band, band value)`` of one signed int64 hash, as Python ints (one row of ``band_values``)."""
    width = check_bands(bands)
    u = int(np.int64(value).view(np.uint64))
    return [(b, (u >> (64 - width * (b + 1))) & ((1 << width) - 1)) for b in range(bands)]


def n_chunks(n_items: int, bucket_cap: int) -> int:
    """How many chunks a band bucket of ``n_items`` hashes is cut into (1 = no split)."""
    return 1 if n_items <= bucket_cap else math.ceil(2 * n_items / bucket_cap)


def chunk_keys(value: int, chunks: int) -> list[tuple[int, int]]:
    """The chunk pairs ``(i, j)``, i <= j, a hash value joins in a bucket cut into ``chunks`` chunks.

    The value's own chunk ``c`` is a hash of the value; it joins every pair that holds
    ``c``, so any two values of the bucket meet in some group: exactly one when their
    chunks differ, all ``chunks`` groups of their chunk when they share it.
    """
    if chunks == 1:
        return [(0, 0)]
    c = uid_hash64(str(value), "chunk") % chunks
    return [(min(c, j), max(c, j)) for j in range(chunks)]


def close_pairs(h: np.ndarray, tolerance: int) -> list[tuple[int, int]]:
    """All index pairs (i < j) of a small set of hashes within ``tolerance`` bits."""
    h = as_u64(h)
    n = len(h)
    out: list[tuple[int, int]] = []
    for i in range(n - 1):
        d = hamming(h[i], h[i + 1:])
        out.extend((i, i + 1 + int(j)) for j in np.nonzero(d <= tolerance)[0])
    return out


def close_value_pairs(values: Iterable[int], tolerance: int) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, a < b, of the distinct hash values of one band group within ``tolerance``."""
    vals = np.array(sorted(values), dtype=np.int64)
    return [(int(vals[i]), int(vals[j])) for i, j in close_pairs(vals, tolerance)]


def candidate_pairs(hashes, bands: int, tolerance: int) -> set[tuple[int, int]]:
    """Pairs of *distinct* hash values within ``tolerance`` that share a band (pure LSH).

    ``hashes`` must hold distinct values; returns index pairs ``(i, j)``, i < j.
    Vectorised: per band, sort by band value and compare every element with the
    one ``o`` places later while they still share the band value (o = 1, 2, ...),
    so the cost is (items x largest bucket) array operations, not a Python loop
    per bucket.
    """
    h = as_u64(hashes)
    bv = band_values(h, bands)
    found_i, found_j = [], []
    for b in range(bands):
        order = np.argsort(bv[:, b], kind="stable")
        vals = bv[order, b]
        hs = h[order]
        o = 1
        while o < len(vals):
            same = np.flatnonzero(vals[o:] == vals[:-o])
            if not len(same):
                break
            close = same[np.bitwise_count(hs[same] ^ hs[same + o]) <= tolerance]
            found_i.append(order[close])
            found_j.append(order[close + o])
            o += 1
    if not found_i:
        return set()
    a = np.concatenate(found_i)
    c = np.concatenate(found_j)
    lo, hi = np.minimum(a, c), np.maximum(a, c)
    return set(zip(lo.tolist(), hi.tolist()))


class UnionFind:
    """Union-find over hashable keys; the root of a set is its smallest key."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        p = self.parent.setdefault(x, x)
        root = x
        while p != root:
            root = p
            p = self.parent[root]
        while self.parent[x] != root:            # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def roots(self) -> dict:
        return {x: self.find(x) for x in list(self.parent)}


def components_of_pairs(pairs: Iterable[tuple]) -> dict:
    """``{member: root}`` for every member of a pair; root = smallest member of its component."""
    uf = UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    return uf.roots()


def survivor_key(uid: str, quality) -> tuple:
    """Sort key of the survivor rule: highest quality first (None/NaN last), then smallest uid."""
    q = None if quality is None else float(quality)
    if q is None or math.isnan(q):
        return (1, 0.0, uid)
    return (0, -q, uid)


def similar_enough(emb, survivor_emb, min_similarity: float | None) -> bool:
    """The optional similarity check before a member is dropped for its survivor.

    Without ``min_similarity`` it always passes; with it, both unit embeddings must
    exist and their cosine must not be below ``min_similarity``.
    """
    if min_similarity is None:
        return True
    if emb is None or survivor_emb is None:
        return False
    return not float(emb @ survivor_emb) < min_similarity


def best_member(members: Iterable[tuple]) -> tuple:
    """The survivor among ``(token, phash, quality, unit embedding)`` members (``survivor_key``).

    Associative, so Beam may apply it to partial groups and again to their results.
    """
    return min(members, key=lambda m: survivor_key(m[0], m[2]))


def member_verdicts(members: Iterable[tuple], survivor: tuple,
                    min_similarity: float | None = None) -> list[tuple[str, Verdict]]:
    """``(token, Verdict)`` for every member of a component but its survivor (``best_member``)
    that passes the similarity check: ``near_duplicate_of:<survivor uid>``."""
    reason = REASON_PREFIX + token_uid(survivor[0])
    return [(m[0], Verdict(reason, None)) for m in members
            if m[0] != survivor[0] and similar_enough(m[3], survivor[3], min_similarity)]


def near_duplicates(uids: Sequence[str], phashes, *, bands: int = 4, tolerance: int = 3,
                    quality: Sequence | None = None, emb=None,
                    min_similarity: float | None = None) -> dict[str, str]:
    """``{dropped uid: survivor uid}`` over a whole set of hashes (the reference of the Beam graph).

    ``emb`` + ``min_similarity`` (optional): a member is dropped only when the
    cosine similarity of its embedding to the survivor's is at least
    ``min_similarity`` (guards against different images with colliding hashes,
    e.g. plain-colour backgrounds with different text).
    """
    h = np.asarray(phashes, dtype=np.int64)
    distinct, inv = np.unique(h, return_inverse=True)
    comp_of_value = components_of_pairs(
        (int(distinct[i]), int(distinct[j])) for i, j in candidate_pairs(distinct, bands, tolerance))
    comp = [comp_of_value.get(int(v), int(v)) for v in distinct[inv]]
    best: dict[int, int] = {}
    for i, c in enumerate(comp):
        q = None if quality is None else quality[i]
        if c not in best or survivor_key(uids[i], q) < survivor_key(uids[best[c]], None if quality is None
                                                                     else quality[best[c]]):
            best[c] = i
    unit = None
    if emb is not None and min_similarity is not None:
        from beam_filter.cluster.kmeans import normalize
        unit = normalize(emb)
    out: dict[str, str] = {}
    for i, c in enumerate(comp):
        s = best[c]
        if s == i:
            continue
        if unit is not None and not similar_enough(unit[i], unit[s], min_similarity):
            continue
        out[uids[i]] = uids[s]
    return out


# ---- decontamination ---------------------------------------------------------

class EvalIndex:
    """Banded index of eval-set hashes: which eval image (if any) a pool hash near-duplicates."""

    def __init__(self, phashes, ids: Sequence[str], bands: int = 4, tolerance: int = 3):
        self.h = as_u64(np.asarray(phashes, dtype=np.int64))
        self.ids = list(ids)
        self.bands = bands
        self.tolerance = tolerance
        self.buckets: list[dict[int, list[int]]] = [dict() for _ in range(bands)]
        if len(self.h):
            bv = band_values(self.h, bands)
            for i in range(len(self.h)):
                for b in range(bands):
                    self.buckets[b].setdefault(int(bv[i, b]), []).append(i)

    def __len__(self) -> int:
        return len(self.ids)

    def match(self, phash: int) -> str | None:
        """The id of the closest eval hash within tolerance (ties: smallest id), else None."""
        if not len(self.h):
            return None
        bv = band_values(np.array([phash], dtype=np.int64), self.bands)[0]
        cand = sorted({i for b in range(self.bands) for i in self.buckets[b].get(int(bv[b]), ())})
        if not cand:
            return None
        d = hamming(np.int64(phash), self.h[cand].view(np.int64))
        ok = [(int(d[k]), self.ids[i]) for k, i in enumerate(cand) if d[k] <= self.tolerance]
        return min(ok)[1] if ok else None


def contamination_reason(hit: str | None) -> str | None:
    """``eval_contamination:<eval id>`` for a match of ``EvalIndex.match``, None for no match."""
    return None if hit is None else CONTAMINATION_PREFIX + hit


def load_eval_hashes(path: str) -> tuple[np.ndarray, list[str]]:
    """Eval-set hashes from an ``.npy`` of int64/uint64 pHashes (ids = row index) or from images.

    ``path`` may be a ``.npy`` file, a directory (every file in it), or a glob
    (local or gs://). Image ids are file names without extension; an image that
    cannot be decoded is an error, since silently skipping it would let
    contamination through.
    """
    import os

    from beam_filter import fsio
    from beam_filter.errors import UserError

    if path.endswith(".npy"):
        arr = fsio.load_npy(path, "eval hash")
        if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.dtype.itemsize != 8:
            raise UserError(f"{path}: want a 1-D int64/uint64 array of pHashes, got {arr.dtype} {arr.shape}")
        return arr.view(np.int64), [str(i) for i in range(len(arr))]
    pattern = path
    if not any(ch in path for ch in "*?["):
        pattern = path.rstrip("/") + "/*"
    files = fsio.match(pattern)
    if not files:
        raise UserError(f"no eval images match {pattern}")
    hashes, ids = [], []
    for p in files:
        data = fsio.read_bytes(p)
        try:
            hashes.append(phash_bytes(data))
        except Exception as e:  # noqa: BLE001 - any decoder error means "not an image"
            raise UserError(f"eval image {p} cannot be decoded: {e}") from None
        ids.append(os.path.splitext(os.path.basename(p))[0])
    return np.array(hashes, dtype=np.int64), ids
