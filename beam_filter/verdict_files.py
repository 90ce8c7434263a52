"""A group stage's verdicts as files, one per select input part: how dedup and clustering run by part.

Why: the general select graph (transforms/select.py) joins a group stage's verdicts back
to the rows with a CoGroupByKey, so the local in-memory runner holds every row of the
pool, with every column and embedding, between stages. The by-part select
(pipeline._select_by_parts) instead sends the stage only *slim* rows -- the row's
identity (uid, shard, key: what ``identity.row_token`` is made of) and the columns the
stage declares in ``needs()`` -- and writes its ``(token, Verdict)`` pairs as one file
per part (``layout.verdicts_name``). Each later pass over that part (a later rank or group
stage, the final decisions) reads its own file and applies the verdicts with
``selection.apply_verdict``, exactly as the join did; rows without a verdict are unchanged.

A verdicts file is parquet, sorted by token: ``token``, ``reason``, ``copies`` and
``columns`` (the verdict's extra columns as JSON of plain Python values: the decisions
writer turns numpy scalars into the same plain values, tables._plain, so the bytes of
the decisions files do not change). Free of Beam imports: the local process pool runs
:func:`group_rows` (transforms/group_parts.py).
"""

from __future__ import annotations

import io
import json

from beam_filter import fsio
from beam_filter import records as R
from beam_filter.identity import SEP
from beam_filter.layout import verdicts_path

IDENTITY = (R.UID, R.SHARD, R.KEY)       # identity.row_token reads these
TOKEN, REASON, COPIES, COLUMNS = "token", "reason", "copies", "columns"


def slim_columns(stage) -> tuple[str, ...]:
    """What a slim row of ``stage`` holds: the identity and every column its ``needs()`` names
    (every alternative: a row keeps whichever of them it has)."""
    out = list(IDENTITY)
    for n in stage.needs():
        out.extend(c for c in n.columns if c not in out)
    return tuple(out)


def slim_row(row: dict, columns: tuple[str, ...]) -> dict:
    """``row`` cut to ``columns`` (a missing column stays missing: a stage tells absent from None)."""
    return {c: row[c] for c in columns if c in row}


def group_rows(part, select_stages, group_index: int, embeddings: tuple = (),
               infos: dict | None = None) -> list[dict]:
    """The slim rows of ``part`` still alive when the group stage ``select_stages[group_index]``
    is reached (the stages before it applied with ``infos``: thresholds, earlier verdict files)."""
    from beam_filter.selection import advance_rows
    from beam_filter.shard_work import read_part_rows

    columns = slim_columns(select_stages[group_index])
    rows = advance_rows(read_part_rows(part, embeddings), select_stages[:group_index], infos)
    return [slim_row(r, columns) for r in rows if r[R.REASON] is None]


def token_shard(token: str) -> str:
    """The source shard named in a row token (``identity.row_token``: uid, shard, key)."""
    return token.split(SEP, 2)[1]


def _plain(value):
    """numpy scalars and arrays -> plain Python values, as the decisions writer stores them."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def write_verdicts(path: str, pairs) -> int:
    """Write ``(token, Verdict)`` pairs (one part's) to ``path``, sorted by token; returns their count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = sorted(pairs, key=lambda tv: tv[0])
    table = pa.table({
        TOKEN: pa.array([t for t, _ in pairs], type=pa.string()),
        REASON: pa.array([v.reason for _, v in pairs], type=pa.string()),
        COPIES: pa.array([None if v.copies is None else int(v.copies) for _, v in pairs], type=pa.int64()),
        COLUMNS: pa.array([None if v.columns is None else json.dumps(_plain(v.columns), sort_keys=True)
                           for _, v in pairs], type=pa.string()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    fsio.write_bytes_atomic(path, buf.getvalue())
    return len(pairs)


def read_verdicts(path: str) -> dict[str, R.Verdict]:
    """{token: Verdict} of one verdicts file; {} when the part had no verdict (no file written)."""
    import pyarrow.parquet as pq

    if not fsio.exists(path):
        return {}
    table = pq.read_table(io.BytesIO(fsio.read_bytes(path)))
    out = {}
    for t, reason, copies, columns in zip(*(table.column(c).to_pylist() for c in (TOKEN, REASON, COPIES, COLUMNS))):
        out[t] = R.Verdict(reason, copies, None if columns is None else json.loads(columns))
    return out


def verdicts_for(directory: str, stage_id: str, rows: list[dict]) -> dict[str, R.Verdict]:
    """The verdicts of ``stage_id`` for ``rows`` (one part: in practice one source shard, one file)."""
    out: dict[str, R.Verdict] = {}
    for shard in sorted({r.get(R.SHARD) for r in rows if r.get(R.SHARD) is not None}):
        out.update(read_verdicts(verdicts_path(directory, stage_id, shard)))
    return out
