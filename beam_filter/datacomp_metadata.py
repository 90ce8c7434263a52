"""DataComp metadata (``*.parquet`` + row-aligned ``*.npz``) as select-phase rows.

DataComp ships, per pool part, a parquet with uid, url, text, original_width,
original_height, clip_b32_similarity_score, clip_l14_similarity_score,
face_bboxes, sha256, and beside it an ``.npz`` of the same stem whose arrays are
row-aligned with the parquet: ``b32_img``, ``b32_txt`` (OpenAI ViT-B/32, 512-d),
``l14_img``, ``l14_txt`` (OpenAI ViT-L/14, 768-d), stored float16.

Each parquet row becomes one row in the select contract:

    uid, url, caption (<- text), caption_chars, caption_words,
    width/height (<- original_width/height), sha256,
    clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes,
    b32_img, b32_txt, l14_img, l14_txt  (1-D float32 arrays: embeddings)
    shard (<- the parquet path)

Reading streams: the parquet by record batches and each npz array row range by
row range straight out of the zip member (an npz is a zip of ``.npy`` files), so
a 1M-row part with 2.5 GB of features never sits in memory at once. An npz
with no matching parquet is ignored; a parquet without an npz gives rows without
embeddings (DataComp's parquet-only download); a row-count mismatch is a
UserError naming both files. ``np.load`` semantics with ``allow_pickle=False``:
object arrays are refused.
"""

from __future__ import annotations

import zipfile
from typing import Iterator, Sequence

import numpy as np

from beam_filter import fsio
from beam_filter import records as R
from beam_filter.errors import UserError
from beam_filter.rules.caption import caption_chars, caption_words

EMBEDDING_KEYS = ("b32_img", "b32_txt", "l14_img", "l14_txt")
SCORE_B32 = "clip_b32_similarity_score"
SCORE_L14 = "clip_l14_similarity_score"
FACE_BBOXES = "face_bboxes"
# parquet column -> row column
RENAMES = {"text": R.CAPTION, "original_width": R.WIDTH, "original_height": R.HEIGHT}
_BATCH_ROWS = 4096


# ---- listing -------------------------------------------------------------------------

def list_metadata_files(directory: str) -> list[tuple[str, str | None]]:
    """Sorted (parquet, npz or None) pairs of a metadata directory (local or gs://)."""
    directory = directory.rstrip("/")
    found = fsio.list_files(directory)
    if not found and not fsio.exists(directory):
        raise UserError(f"--metadata {directory}: no such directory")
    parquets = sorted(p for p in found if p.endswith(".parquet"))
    if not parquets:
        raise UserError(f"--metadata {directory}: no *.parquet files (expected DataComp metadata: "
                        "parquet + npz per part)")
    npzs = {p[: -len(".npz")] for p in found if p.endswith(".npz")}
    return [(p, p[: -len(".parquet")] + ".npz" if p[: -len(".parquet")] in npzs else None)
            for p in parquets]


def embedding_keys_for(stages) -> list[str]:
    """The npz arrays a recipe reads, so ``ReadDataCompMetadata(dir, embeddings=...)`` loads only those.

    A stage needs an array when one of its parameters names it (``embedding: l14_img``),
    or when it is ``image_based`` without an explicit embedding (it defaults to
    ``l14_img``). Combinators are searched through. Each array left out saves
    2-3 KB per row.
    """
    found: set[str] = set()

    def visit(value):
        if isinstance(value, str) and value in EMBEDDING_KEYS:
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for stage in stages:
        for child in getattr(stage, "children", None) or [stage]:
            visit(child.config)
            if child.name == "image_based" and not child.config.get("embedding"):
                found.add("l14_img")
    return [k for k in EMBEDDING_KEYS if k in found]


# ---- npz streaming ---------------------------------------------------------------------

class _NpyRows:
    """Rows of one ``.npy`` member of an open npz, read sequentially in chunks."""

    def __init__(self, archive: zipfile.ZipFile, key: str, where: str):
        self.key, self.where = key, where
        self.stream = archive.open(key + ".npy")
        version = np.lib.format.read_magic(self.stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.stream)
        if dtype.hasobject:
            raise UserError(f"{where}: array {key!r} holds Python objects; refusing to unpickle it")
        if fortran and len(shape) > 1:
            raise UserError(f"{where}: array {key!r} is Fortran-ordered; save it C-ordered")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    @property
    def rows(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    def read(self, n: int) -> np.ndarray:
        want = n * self.row_bytes
        chunks, got = [], 0
        while got < want:
            chunk = self.stream.read(want - got)
            if not chunk:
                raise UserError(f"{self.where}: array {self.key!r} ends early")
            chunks.append(chunk)
            got += len(chunk)
        data = np.frombuffer(b"".join(chunks), dtype=self.dtype)
        return data.reshape((n,) + tuple(self.shape[1:])).astype(np.float32)

    def close(self):
        self.stream.close()


# ---- rows --------------------------------------------------------------------------

def _row_dicts(table_batch) -> list[dict]:
    cols = table_batch.to_pydict()
    names = list(cols)
    n = table_batch.num_rows
    rows = []
    for i in range(n):
        row = {}
        for name in names:
            row[RENAMES.get(name, name)] = cols[name][i]
        rows.append(row)
    return rows


def passthrough_columns(batches: list, stages) -> dict | None:
    """The part's parquet columns as Arrow arrays (renamed as rows name them, typed as the rows'
    Python values would be: tables.python_typed), for its decisions file: converting 50k rows of
    url/text/sha256 back from Python objects was most of a part's select time. ``batches``: what
    :func:`iter_metadata_rows` read (``keep_batches``), aligned with its rows. Columns a stage
    produces (it may overwrite them in the rows) are left out."""
    import pyarrow as pa

    from beam_filter.tables import DECISION_ONLY, python_typed

    if not batches:
        return None
    produced = set(DECISION_ONLY) | {R.UID, R.SHARD, R.KEY, R.READ_ERROR, R.WARNING}

    def visit(stage):
        produced.update(stage.produced_columns())
        produced.update(stage.verdict_columns())
        for child in getattr(stage, "children", None) or ():
            visit(child)

    for stage in stages:
        visit(stage)
    table = pa.Table.from_batches(batches)
    out = {}
    for name in table.column_names:
        row_name = RENAMES.get(name, name)
        if row_name in produced:
            continue
        typed = python_typed(table.column(name))
        if typed is not None:
            out[row_name] = typed
    return out


def iter_metadata_rows(parquet_path: str, npz_path: str | None = "auto",
                       embeddings: Sequence[str] | None = None,
                       batch_rows: int = _BATCH_ROWS, keep_batches: list | None = None) -> Iterator[dict]:
    """Rows of one DataComp metadata part, streamed.

    ``npz_path``: "auto" = the parquet's stem + ``.npz`` when it exists; None = no
    embeddings. ``embeddings``: which npz arrays to attach (default: those of
    ``EMBEDDING_KEYS`` present; a requested one that is missing is a UserError).
    ``keep_batches``: a list that receives every Arrow record batch read (the rows' source, for
    :func:`passthrough_columns` without reading the file again).
    """
    import pyarrow.parquet as pq

    if npz_path == "auto":
        guess = parquet_path[: -len(".parquet")] + ".npz"
        npz_path = guess if fsio.exists(guess) else None
    with fsio.open_read(parquet_path) as pf:
        try:
            parquet = pq.ParquetFile(pf)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise UserError(f"{parquet_path}: not a readable parquet file ({e})") from None
        total = parquet.metadata.num_rows
        if "uid" not in parquet.schema_arrow.names:
            raise UserError(f"{parquet_path}: no 'uid' column; is this DataComp metadata?")
        arrays: list[_NpyRows] = []
        archive = nf = None
        try:
            if npz_path is not None:
                nf = fsio.open_read(npz_path)
                archive = zipfile.ZipFile(nf)
                present = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
                wanted = list(embeddings) if embeddings is not None else [
                    k for k in EMBEDDING_KEYS if k in present]
                missing = [k for k in wanted if k not in present]
                if missing:
                    raise UserError(f"{npz_path}: no array(s) {', '.join(missing)}; has {', '.join(present)}")
                for key in wanted:
                    arr = _NpyRows(archive, key, npz_path)
                    if arr.rows != total:
                        raise UserError(f"{npz_path}: {key} has {arr.rows} rows but {parquet_path} "
                                        f"has {total}; the npz must be row-aligned with the parquet")
                    arrays.append(arr)
            elif embeddings:
                raise UserError(f"{parquet_path}: no .npz beside it, but embeddings "
                                f"{', '.join(embeddings)} were asked for")
            for batch in parquet.iter_batches(batch_size=batch_rows):
                if keep_batches is not None:
                    keep_batches.append(batch)
                rows = _row_dicts(batch)
                feats = [(a.key, a.read(len(rows))) for a in arrays]
                for i, row in enumerate(rows):
                    # Identity: the parquet names the shard; metadata has no tar key, the uid stands in.
                    row[R.SHARD] = parquet_path
                    if row.get(R.KEY) is None:
                        row[R.KEY] = row.get(R.UID)
                    row.setdefault(R.READ_ERROR, None)
                    row.setdefault(R.WARNING, None)
                    text = row.get(R.CAPTION)
                    row[R.CAPTION_CHARS] = caption_chars(text)
                    row[R.CAPTION_WORDS] = caption_words(text)
                    for key, mat in feats:
                        row[key] = mat[i]
                    yield row
        finally:
            for a in arrays:
                a.close()
            if archive is not None:
                archive.close()
            if nf is not None:
                nf.close()
