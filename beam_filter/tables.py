"""Rows <-> parquet (+ npz embeddings) files, deterministic bytes.

One file per source shard: ``scores/<stem>.parquet`` and ``decisions/<stem>.parquet``,
rows sorted by key, columns in a fixed order (identity and decision columns
first, the rest sorted by name). Embedding columns (1-D numpy values, see
registry.py) are stored fp16 in ``embeddings/<stem>.npz`` with a ``uids``
array, because numpy loads them directly for clustering and dedup, and a
768-float column would triple the parquet size.
"""

from __future__ import annotations

import io
import itertools
import operator
from typing import Any, Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_filter import fsio
from beam_filter import records as R
from beam_filter.fsio import write_bytes_atomic
from beam_filter.layout import OutputLayout

_FIRST = (R.UID, R.SHARD, R.KEY, R.KEPT, R.COPIES, R.REASON, R.STAGE, R.READ_ERROR)
# Text columns that are None in most rows: typed string even when a whole shard has no value,
# so every shard's parquet has one schema (a dataset reader would otherwise see null vs string).
_STRING_COLUMNS = frozenset({R.WARNING})
DECISION_ONLY = (R.KEPT, R.COPIES, R.REASON, R.STAGE, "failed_stages")
META_SCORE_HASH = b"beam_filter.score_hash"
META_RECIPE_HASH = b"beam_filter.recipe_hash"


def split_embeddings(rows: list[dict], dtype=np.float16) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Move 1-D numpy columns out of the rows into stacked fp16 arrays (rows without one get NaN);
    ``dtype`` float32 keeps the model's values exactly (`run`'s work rows, :func:`write_work_rows`)."""
    if not any(issubclass(t, np.ndarray) for t in _value_types(rows)):     # the common case, fast
        return rows, {}
    emb_cols = sorted({k for r in rows for k, v in r.items() if isinstance(v, np.ndarray)})
    arrays = {}
    for col in emb_cols:
        dim = next(r[col].shape[0] for r in rows if isinstance(r.get(col), np.ndarray))
        arr = np.full((len(rows), dim), np.nan, dtype=dtype)
        for i, r in enumerate(rows):
            v = r.get(col)
            if isinstance(v, np.ndarray):
                arr[i] = v.astype(dtype)
        arrays[col] = arr
    slim = [{k: v for k, v in r.items() if k not in arrays} for r in rows]
    return slim, arrays


def _value_types(rows: list[dict]) -> set[type]:
    """The types of every value in ``rows`` (C-speed: no Python call per value)."""
    return set(map(type, itertools.chain.from_iterable(map(dict.values, rows))))


def python_typed(column: pa.ChunkedArray) -> pa.Array | None:
    """``column`` typed as ``pa.array(column.to_pylist())`` would type it, when that is a plain cast
    (integers -> int64, float32/64 -> float64, strings -> string, booleans); None otherwise.

    Lets a writer pass columns it read with Arrow straight through, with the bytes
    :func:`rows_to_table` would have written from the same values as Python objects.
    """
    if column.null_count == len(column):
        return None                      # all None: pa.array infers the null type
    target = _python_type(column)
    return None if target is None else column.cast(target).combine_chunks()


def _python_type(values) -> pa.DataType | None:
    """The type pa.array infers for ``values`` as Python objects (None when not a plain mapping):
    lists (DataComp's face_bboxes) nest it, and a list level with no value at all would be
    inferred as null, so those stay on the Python path."""
    import pyarrow.compute as pc

    t = values.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = pc.list_flatten(values)
        if len(inner) == 0 or inner.null_count == len(inner):
            return None
        inner_type = _python_type(inner)
        return None if inner_type is None else pa.list_(inner_type)
    if pa.types.is_integer(t) and t != pa.uint64():
        return pa.int64()
    if t in (pa.float32(), pa.float64()):
        return pa.float64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_boolean(t):
        return pa.bool_()
    return None


def rows_to_table(rows: list[dict], drop: Iterable[str] = (), arrow_columns: dict | None = None) -> pa.Table:
    """Rows -> a table with columns in the fixed order. ``arrow_columns``: columns already held as
    Arrow arrays aligned with ``rows`` and equal to the rows' values (typed by :func:`python_typed`),
    used instead of converting those values again."""
    drop = set(drop)
    names = set().union(*rows) - drop
    order = [c for c in _FIRST if c in names] + sorted(names - set(_FIRST))
    arrow_columns = arrow_columns or {}
    columns = {}
    for name in order:
        if name in arrow_columns:
            columns[name] = arrow_columns[name]
            continue
        columns[name] = column_from_values(name, list(map(operator.methodcaller("get", name), rows)))
    return pa.table(columns)


def column_from_values(name: str, values: list) -> pa.Array:
    """One column of :func:`rows_to_table` from its Python values (typed as pa.array infers them;
    text for a column of mixed values); columnar.py builds the same bytes without rows."""
    if any(issubclass(t, np.generic) for t in set(map(type, values))):     # C-speed type scan
        values = [_plain(v) for v in values]
    if name in _STRING_COLUMNS:
        return pa.array(values, type=pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_rows(path: str, rows: list[dict], *, drop=(), metadata: dict[bytes, bytes] | None = None,
               embeddings_path: str | None = None, arrow_columns: dict | None = None,
               presorted: bool = False, embeddings_dtype=np.float16) -> None:
    """Write rows (sorted by key) to parquet atomically; embeddings to an npz beside when asked
    (fp16 unless ``embeddings_dtype`` says otherwise).

    ``arrow_columns``: columns aligned with ``rows`` as given, passed through (rows_to_table).
    ``presorted``: the caller already sorted them by key (a stable sort of sorted rows changes
    nothing, so this only saves the work)."""
    if not presorted:
        order = sorted(range(len(rows)), key=lambda i: rows[i][R.KEY])
        rows = [rows[i] for i in order]
        if arrow_columns:
            index = pa.array(order, type=pa.int64())
            arrow_columns = {k: v.take(index) for k, v in arrow_columns.items()}
    slim, arrays = split_embeddings(rows, embeddings_dtype)
    write_table(path, rows_to_table(slim, drop=drop, arrow_columns=arrow_columns), metadata)
    if embeddings_path and arrays:
        ebuf = io.BytesIO()
        np.savez(ebuf, uids=np.array([r[R.UID] for r in rows]), **arrays)
        write_bytes_atomic(embeddings_path, ebuf.getvalue())


def write_table(path: str, table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> None:
    """A table (schema ``metadata`` added) to zstd parquet, atomically: every parquet file we write."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_bytes_atomic(path, buf.getvalue())


def read_rows(path: str, embeddings_path: str | None = None, columns: list[str] | None = None) -> list[dict]:
    """Rows of a scores/decisions parquet file, with embeddings (float32) when an npz is given."""
    table = pq.read_table(io.BytesIO(fsio.read_bytes(path)), columns=columns)
    rows = table.to_pylist()
    if embeddings_path and fsio.exists(embeddings_path):
        npz = np.load(io.BytesIO(fsio.read_bytes(embeddings_path)), allow_pickle=False)
        if len(npz["uids"]) != len(rows):
            raise ValueError(f"{embeddings_path}: {len(npz['uids'])} rows, parquet has {len(rows)}")
        for col in npz.files:
            if col == "uids":
                continue
            arr = npz[col].astype(np.float32)      # row-aligned with the parquet (both sorted by key)
            for r, vec in zip(rows, arr):
                if not np.isnan(vec[0]):
                    r[col] = vec
    return rows


def file_metadata(path: str) -> dict[bytes, bytes]:
    return pq.read_schema(io.BytesIO(fsio.read_bytes(path))).metadata or {}


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    """Only ``columns`` of a parquet file (a local one memory-mapped); the file is closed again."""
    if fsio.is_remote(path):
        with fsio.open_read(path) as f:
            return pq.read_table(f, columns=columns)
    return pq.read_table(path, columns=columns, memory_map=True)


def parquet_metadata(path: str) -> pq.FileMetaData:
    """The footer of a parquet file; the file is closed again."""
    if fsio.is_remote(path):
        with fsio.open_read(path) as f:
            return pq.read_metadata(f)
    return pq.read_metadata(path)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


class ShardKept(NamedTuple):
    """What the reshard planner needs of a source shard: its kept (key, uid, copies), in key order."""

    shard: str
    kept: tuple


def write_shard_tables(layout: OutputLayout, shard: str, rows: list[dict], *,
                       write_scores: bool, write_decisions: bool, metadata: dict,
                       arrow_columns: dict | None = None) -> ShardKept:
    """Write one shard's scores and/or decisions files; return its kept list.

    ``arrow_columns``: columns of ``rows`` already held as Arrow arrays aligned with them
    (a metadata part as read), passed through to the decisions file unconverted."""
    order = sorted(range(len(rows)), key=lambda i: rows[i][R.KEY])
    rows = [rows[i] for i in order]
    if arrow_columns:
        index = pa.array(order, type=pa.int64())
        arrow_columns = {k: v.take(index) for k, v in arrow_columns.items()}
    if write_scores:
        write_rows(layout.scores(shard), rows, drop=DECISION_ONLY, metadata=metadata,
                   embeddings_path=layout.embeddings(shard), presorted=True)
    if write_decisions:
        write_rows(layout.decisions(shard), rows, metadata=metadata, arrow_columns=arrow_columns,
                   presorted=True)
    kept = tuple(kept_entry(r) for r in rows if r.get(R.KEPT))
    return ShardKept(shard, kept)


def write_work_rows(layout: OutputLayout, shard: str, rows: list[dict], metadata: dict) -> None:
    """One shard's scored rows as `run` holds them until a select that needs them whole
    (``layout.work_rows``): the scores file's columns, embeddings kept float32 (the model's own
    values, which the general graph's group stages cluster), read back by ``read_rows``. The
    select then writes the final scores file (fp16 embeddings, verdict columns) with
    :func:`write_shard_tables`, as the general graph does (shard_work.select_part)."""
    write_rows(layout.work_rows(shard), rows, drop=DECISION_ONLY, metadata=metadata,
               embeddings_path=layout.work_embeddings(shard), embeddings_dtype=np.float32)


def kept_entry(row: dict) -> tuple:
    """(key, uid, copies), plus the caption to write when the recipe chose one other than the
    source's (output_captions.py; the writer then rewrites .txt/.json, else copies bytes)."""
    from beam_filter.output_captions import OUTPUT_CAPTION

    entry = (row[R.KEY], row[R.UID], row[R.COPIES])
    caption = row.get(OUTPUT_CAPTION)
    return entry + (caption,) if isinstance(caption, str) else entry
