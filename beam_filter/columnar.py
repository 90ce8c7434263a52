"""Columnar select: decide a select input part on Arrow columns and numpy arrays, rows never built.

The by-part select (``shard_work.select_part``) used to build one Python dict per row
(``datacomp_metadata.iter_metadata_rows``, or a score run's scores file), ask each stage
``reason(row)`` and turn the rows back into a table: most of a 50k-row DataComp metadata
part's second and a half. When every stage of
a recipe has a vectorised hook (``reason_array`` on rules, scored stages and
combinators; ``verdict_reasons_array`` on row-wise group stages: registry.py), this
module decides the whole part at once and writes the decisions file from arrays:

* the bookkeeping of ``selection.py`` on arrays (:func:`_decide`): first reason wins,
  ``failed_stages`` lists every local stage a row fails (rows dropped earlier are still
  evaluated by local stages, not by global ones), read errors, copies multiplied by the
  rules that keep a row, ``finish_decision``;
* the file ``tables.write_shard_tables`` would write, byte for byte (:func:`_decisions_table`):
  columns ``_FIRST`` then sorted, rows by key, passthrough columns typed by
  ``tables.python_typed``, the others by ``tables.column_from_values``.

Anything else declines (None): the caller then takes the row path, which also owns every
one-line error (an unreadable file, a missing column). Declined: an ``add_back`` section,
group stages that are not row-wise (and row-wise ones where two rows share a row token), a
stage without a hook or with a column it cannot read as numbers, embeddings of a scores
file, null uids or keys, empty-string read errors, renamed columns that collide.
``BEAM_FILTER_COLUMNAR=0`` turns the path off (tests compare both).

Beam-free, like shard_work.py: the local process pool imports it in fresh workers.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable

import numpy as np

from beam_filter import records as R

ENV_SWITCH = "BEAM_FILTER_COLUMNAR"      # "0": always build rows (the reference path)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


class PartColumns:
    """One metadata part as columns (renamed as rows name them), with per-part caches.

    What a stage hook reads instead of rows: ``has``/``pylist``/``floats``/``sides``,
    the derived caption counts, the language label per lid model (one batched fastText
    call per part, shared by every stage that asks), and the npz embeddings the recipe
    reads (loaded on first use, float32 as the rows would hold them).
    """

    def __init__(self, path: str, table, npz: str | None, embeddings: list[str], metadata: bool = True):
        """``path``: the shard the part's rows name (a metadata parquet; a scores file's ``shard``);
        ``metadata``: a DataComp metadata pair, whose rows gain shard, key, read_error, warning and
        the caption counts; else a scores file, whose rows are its columns as they are."""
        self.path, self.table, self.n, self.metadata = path, table, table.num_rows, metadata
        self._npz, self._wanted = npz, list(embeddings)
        self._cache: dict = {}

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def cached(self, key, compute: Callable[[], Any]):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def pylist(self, name: str) -> list | None:
        """The column's values as the rows hold them (None when the part has no such column)."""
        if not self.has(name):
            return None
        return self.cached(("pylist", name), lambda: self.table.column(name).to_pylist())

    def floats(self, name: str) -> np.ndarray | None:
        """A numeric column as float64, NaN where null (``float(v)`` per row); None: not numbers."""
        import pyarrow as pa

        if not self.has(name):
            return None
        col = self.table.column(name)
        t = col.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
            return None
        return self.cached(("floats", name), lambda: col.cast(pa.float64()).to_numpy(zero_copy_only=False))

    def sides(self, name: str) -> np.ndarray | None:
        """An image side (width/height) as float64 with NaN for a missing value (all NaN when the
        column is absent: ``row.get`` gives None); None unless whole numbers (integer typed)."""
        import pyarrow as pa

        if not self.has(name):
            return np.full(self.n, np.nan)
        t = self.table.column(name).type
        if not (pa.types.is_integer(t) or pa.types.is_null(t)):
            return None
        return self.floats(name)

    def unique_tokens(self) -> bool:
        """Whether every row has its own row token (``identity.row_token``: uid, shard, key; a
        metadata row's key is its uid unless the part has keys). Where two rows share one, the
        row path joins a group verdict to both (by token), which arrays do not reproduce."""
        import pyarrow as pa
        import pyarrow.compute as pc

        def compute():
            uid = self.table.column(R.UID).cast(pa.string())
            key = pc.coalesce(self.table.column(R.KEY).cast(pa.string()), uid) if self.has(R.KEY) else uid
            shard = self.table.column(R.SHARD).cast(pa.string()) if not self.metadata else ""
            tokens = pc.binary_join_element_wise(uid, shard, key, "\t")
            return pc.count_distinct(tokens).as_py() == self.n
        return self.cached("unique_tokens", compute)

    def captions(self) -> list:
        return self.pylist(R.CAPTION) or [None] * self.n

    def caption_chars(self) -> np.ndarray:
        """``rules.caption.caption_chars`` of every row (``len``: code points; 0 for a missing caption)."""
        import pyarrow.compute as pc

        def compute():
            if not self.has(R.CAPTION):
                return np.zeros(self.n, np.int64)
            return _int64(pc.utf8_length(self.table.column(R.CAPTION).cast("string")))
        return self.cached("chars", compute)

    def caption_words(self) -> np.ndarray:
        """``rules.caption.caption_words`` of every row (``len(str.split())``; 0 for a missing caption).
        Arrow's Unicode whitespace is Python's ``str.isspace`` set (tests/unit/test_columnar_select.py
        checks every such code point); Arrow keeps empty pieces at the ends, so trim first."""
        import pyarrow.compute as pc

        def compute():
            if not self.has(R.CAPTION):
                return np.zeros(self.n, np.int64)
            trimmed = pc.utf8_trim_whitespace(self.table.column(R.CAPTION).cast("string"))
            words = pc.list_value_length(pc.utf8_split_whitespace(trimmed))
            return _int64(pc.if_else(pc.equal(trimmed, ""), 0, words))
        return self.cached("words", compute)

    def languages(self, column: str, lid_model: str | None, where: np.ndarray | None = None) -> np.ndarray:
        """``stages.rules.row_language`` of the rows in the bool mask ``where`` (default: all): the
        ``column`` value, else fastText's top-1 label of the caption, detected in one batched call
        for the rows that need it and kept for the next stage that asks; other rows hold None."""
        import pyarrow as pa

        from beam_filter.rules.language import detect_language_labels, detect_language_labels_arrow

        key = ("lang", column, lid_model)
        if key not in self._cache:
            given = self.pylist(column) or [None] * self.n
            self._cache[key] = (_objects(given), np.array([v is not None for v in given], bool))
        labels, known = self._cache[key]
        todo = np.flatnonzero(~known if where is None else (where & ~known))
        if len(todo):
            text = self.table.column(R.CAPTION) if self.has(R.CAPTION) else None
            if text is not None and (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
                found = detect_language_labels_arrow(text if len(todo) == self.n else text.take(todo), lid_model)
            else:
                captions = self.captions()
                found = detect_language_labels([captions[i] for i in todo], lid_model)
            labels[todo] = _objects(found)
            known[todo] = True
        return labels

    def embedding(self, name: str, rows: np.ndarray) -> np.ndarray | None:
        """The npz array ``name``'s ``rows`` as float32 (what the rows would hold), when the recipe
        reads it (else None, as rows would lack it). The array stays as stored (fp16) in the cache:
        only the rows asked for are widened."""
        if name not in self._wanted or self._npz is None:
            return None

        def load():
            import zipfile

            from beam_filter import fsio
            from beam_filter.datacomp_metadata import _NpyRows

            with fsio.open_read(self._npz) as f, zipfile.ZipFile(f) as archive:
                arr = _NpyRows(archive, name, self._npz)
                try:
                    data = arr.stream.read(self.n * arr.row_bytes)
                finally:
                    arr.close()
            if len(data) != self.n * arr.row_bytes:
                raise ValueError(f"{self._npz}: array {name!r} ends early")
            return np.frombuffer(data, dtype=arr.dtype).reshape((self.n,) + tuple(arr.shape[1:]))
        return self.cached(("embedding", name), load)[rows].astype(np.float32)


def load_part(part, embeddings: tuple = ()) -> PartColumns | None:
    """The columns of a DataComp metadata (parquet, npz) part or of a scores file; None for
    anything the row path reads differently or reports as an error."""
    if not isinstance(part, (tuple, list)):
        return _load_scores(part)
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_filter import fsio
    from beam_filter.datacomp_metadata import RENAMES, _NpyRows

    parquet, npz = part
    with fsio.open_read(parquet) as f:
        try:
            table = pq.ParquetFile(f).read()
        except Exception:  # noqa: BLE001 - the row path reports an unreadable file in one line
            return None
    names = [RENAMES.get(n, n) for n in table.column_names]
    wanted = list(embeddings) if npz else []
    if R.UID not in names or len(set(names)) != len(names) or set(wanted) & set(names):
        return None
    table = table.rename_columns(names)
    if not _is_text(table.column(R.UID).type) or table.column(R.UID).null_count:
        return None
    for name in (R.KEY, R.CAPTION, R.READ_ERROR, R.WARNING):      # text, as the row path reads them
        if name in names and not (_is_text(table.column(name).type) or pa.types.is_null(table.column(name).type)):
            return None
    from beam_filter.output_captions import OUTPUT_CAPTION

    if OUTPUT_CAPTION in names:
        return None
    if wanted:      # the row path checks every array it attaches before its first row
        try:
            with fsio.open_read(npz) as f, zipfile.ZipFile(f) as archive:
                present = {n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")}
                if not set(wanted) <= present:
                    return None
                for key in wanted:
                    arr = _NpyRows(archive, key, npz)
                    arr.close()
                    if arr.rows != table.num_rows:
                        return None
        except Exception:  # noqa: BLE001 - a damaged npz: the row path's one-line error
            return None
    return PartColumns(parquet, table, npz, wanted)


def _load_scores(path: str) -> PartColumns | None:
    """A scores file of a score run (``tables.read_rows``' rows, as columns). Its embeddings are
    not loaded: a stage that reads one declines (``PartColumns.embedding`` is None)."""
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_filter import fsio
    from beam_filter.datacomp_metadata import _NpyRows
    from beam_filter.layout import embeddings_beside

    try:
        with fsio.open_read(path) as f:
            table = pq.ParquetFile(f).read()
    except Exception:  # noqa: BLE001 - the row path reports an unreadable file in one line
        return None
    names = table.column_names
    for name in (R.UID, R.KEY, R.SHARD):        # every row names its sample (and sorts by key)
        if name not in names or not _is_text(table.column(name).type) or table.column(name).null_count:
            return None
    for name in (R.CAPTION, R.READ_ERROR, R.WARNING):
        if name in names and not (_is_text(table.column(name).type) or pa.types.is_null(table.column(name).type)):
            return None
    from beam_filter.output_captions import OUTPUT_CAPTION

    if OUTPUT_CAPTION in names:
        return None
    npz = embeddings_beside(path)
    if fsio.exists(npz):        # read_rows refuses an npz that is not row-aligned: leave that to it
        try:
            with fsio.open_read(npz) as f, zipfile.ZipFile(f) as archive:
                uids = _NpyRows(archive, "uids", npz)
                uids.close()
                if uids.rows != table.num_rows:
                    return None
        except Exception:  # noqa: BLE001 - a damaged npz: the row path's error
            return None
    shard = table.column(R.SHARD)[0].as_py() if table.num_rows else path
    return PartColumns(shard, table, None, [], metadata=False)


def _int64(column) -> np.ndarray:
    """An Arrow integer column as int64, null (a missing caption) as 0."""
    import pyarrow.compute as pc

    return pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of ``values`` (strings stay elements, never become sequences)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


# ---- decisions on arrays ----------------------------------------------------------------

class _Decisions:
    """The decision columns of a part, in read order (``selection.start_decision`` on arrays)."""

    def __init__(self, part: PartColumns):
        n = part.n
        errors = part.pylist(R.READ_ERROR) or [None] * n
        self.read_error = np.array([bool(e) for e in errors], dtype=bool)
        self.reason = _objects(errors)
        self.reason[~self.read_error] = None
        self.stage = np.full(n, None, dtype=object)
        self.stage[self.read_error] = "read"
        self.copies = np.ones(n, dtype=np.int64)      # None and 1 end the same (finish_decision)
        self.failed: list[tuple[str, np.ndarray]] = [("read", self.read_error)]
        self.alive = ~self.read_error
        self.empty_error = any(e == "" for e in errors)   # a reason "" the row path keeps as is

    def drop(self, stage_id: str, reasons: np.ndarray, where: np.ndarray) -> None:
        """Rows in ``where`` still alive take ``reasons`` from ``stage_id``."""
        newly = where & self.alive
        self.reason[newly] = reasons[newly]
        self.stage[newly] = stage_id
        self.alive &= ~newly


def _decide(part: PartColumns, stages, infos: dict | None) -> _Decisions | None:
    """``selection.advance_rows`` on arrays; None when some stage has no hook here."""
    from beam_filter.recipe import AddBackSection, Combinator
    from beam_filter.registry import GroupStage, RuleStage, ScoredStage
    from beam_filter.selection import is_local
    from beam_filter.sources import UNFILTERED

    infos = infos or {}
    d = _Decisions(part)
    if d.empty_error:
        return None
    for stage in stages:
        if isinstance(stage, AddBackSection):
            return None
        if isinstance(stage, GroupStage):
            if not stage.row_wise or not part.unique_tokens():
                return None
            reasons = stage.verdict_reasons_array(part, d.alive.copy())
            if reasons is None:
                return None
            fails = d.alive & _not_none(reasons)
            d.failed.append((stage.id, fails))
            d.drop(stage.id, reasons, fails)
            continue
        if not isinstance(stage, (RuleStage, ScoredStage, Combinator)):
            return None
        evaluated = ~d.read_error if is_local(stage) else d.alive.copy()
        reasons = stage.reason_array(part, evaluated.copy(), infos.get(stage.id))
        if reasons is None:
            return None
        fails = evaluated & _not_none(reasons)
        d.failed.append((stage.id, fails))
        reached = d.alive.copy()
        d.drop(stage.id, reasons, fails)
        if isinstance(stage, RuleStage):
            keeps = reached & (~fails | (reasons == UNFILTERED))
            rows = np.flatnonzero(keeps)
            copies = stage.copies_array(part, rows) if len(rows) else None
            if copies is not None:
                d.copies[rows] *= np.asarray(copies, dtype=np.int64)
    return d


def _not_none(values: np.ndarray) -> np.ndarray:
    return np.fromiter((v is not None for v in values), bool, len(values))


# ---- the decisions file -------------------------------------------------------------------

def _decisions_table(part: PartColumns, d: _Decisions, kept: np.ndarray, copies: np.ndarray):
    """The table ``tables.write_shard_tables`` writes for this part's rows (before its metadata)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from beam_filter.selection import FAILED_STAGES
    from beam_filter.tables import _FIRST, column_from_values, python_typed

    table, n = part.table, part.n
    uid = table.column(R.UID).cast(pa.string()).combine_chunks()
    if part.has(R.KEY):     # a metadata row without a key takes its uid (a scores file has every key)
        key = pc.coalesce(table.column(R.KEY).cast(pa.string()), table.column(R.UID).cast(pa.string()))
        key = key.combine_chunks()
    else:
        key = uid
    order = pc.sort_indices(key)          # stable, by UTF-8 bytes = by code points, as sorted() on str
    idx = order.to_numpy()

    def values(arr) -> list:
        return arr[idx].tolist()

    failed = _failed_stages(d.failed, idx)
    derived = {
        R.UID: uid.take(order), R.KEY: key.take(order),
        R.KEPT: column_from_values(R.KEPT, values(kept)),
        R.COPIES: column_from_values(R.COPIES, values(copies)),
        R.REASON: column_from_values(R.REASON, values(d.reason)),
        R.STAGE: column_from_values(R.STAGE, values(d.stage)),
        FAILED_STAGES: failed,
    }
    if part.metadata:           # what datacomp_metadata.iter_metadata_rows adds to each row
        derived.update({
            R.SHARD: pa.array([part.path] * n, pa.string()),
            R.CAPTION_CHARS: pa.array(part.caption_chars()[idx], pa.int64()),
            R.CAPTION_WORDS: pa.array(part.caption_words()[idx], pa.int64()),
        })
        for name in (R.READ_ERROR, R.WARNING):       # row.setdefault: the part's own values, else None
            given = part.pylist(name)
            derived[name] = column_from_values(name, [given[i] for i in idx] if given is not None else [None] * n)
    names = set(table.column_names) | set(derived)
    ordered = [c for c in _FIRST if c in names] + sorted(names - set(_FIRST))
    columns = {}
    for name in ordered:
        if name in derived:
            columns[name] = derived[name]
            continue
        typed = python_typed(table.column(name))
        columns[name] = (typed.take(order) if typed is not None
                         else column_from_values(name, [part.pylist(name)[i] for i in idx]))
    return pa.table(columns), idx


def _failed_stages(failed: list, idx: np.ndarray):
    """The ``failed_stages`` column in row order ``idx``: each row's failing stage ids in recipe
    order (``read`` first), typed as pa.array infers the lists (list<null> when all are empty)."""
    import pyarrow as pa

    from beam_filter.tables import column_from_values

    masks = np.stack([mask[idx] for _, mask in failed])          # (stages, rows)
    rows, which = np.nonzero(masks.T)                            # by row, then by stage order
    if not len(rows):
        return column_from_values("failed_stages", [[] for _ in range(len(idx))])
    ids = np.array([sid for sid, _ in failed], dtype=object)
    offsets = np.concatenate([[0], np.cumsum(masks.sum(axis=0))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(ids[which].tolist(), pa.string()))


def select_part_columnar(part, select_stages, layout, metadata: dict, embeddings: tuple = (),
                         infos: dict | None = None, with_kept: bool = True):
    """``shard_work.select_part`` without rows: the same decisions file, ShardKept and counts,
    or None when this part or recipe is not columnar-capable (the caller builds rows).
    ``with_kept`` False: no kept list (a Python tuple per kept row) is built."""
    if not enabled():
        return None
    view = load_part(part, embeddings)
    if view is None:
        return None
    d = _decide(view, select_stages, infos)
    if d is None:
        return None
    from beam_filter.addback import is_added_back
    from beam_filter.shard_work import ShardResult
    from beam_filter.sources import is_unfiltered
    from beam_filter.tables import ShardKept, write_table

    n = view.n
    if n == 0:
        return ShardResult(None, [], Counter({"rows_read": 0}), {})
    kept = d.alive.copy()           # no reason; else added back or of an unfiltered source (finish_decision)
    dropped = np.flatnonzero(~kept)
    if dropped.size:                # asked once per distinct reason, not per row
        keeps = {r: is_added_back(r) or is_unfiltered(r) for r in set(d.reason[dropped].tolist())}
        if any(keeps.values()):
            kept[dropped] = [keeps[r] for r in d.reason[dropped].tolist()]
    copies = np.where(kept, d.copies, 0)
    table, idx = _decisions_table(view, d, kept, copies)
    write_table(layout.decisions(view.path), table, metadata)
    if not with_kept:
        return ShardResult(None, [], _counts(kept, d.reason), {})
    where = np.flatnonzero(kept[idx])          # kept rows, in key order
    take = table.column(R.KEY).take(where), table.column(R.UID).take(where)
    entries = tuple(zip(take[0].to_pylist(), take[1].to_pylist(), copies[idx][where].tolist()))
    return ShardResult(ShardKept(view.path, entries), [], _counts(kept, d.reason), {})


def _counts(kept: np.ndarray, reasons: np.ndarray) -> Counter:
    """``rows_read``, then ``kept`` / ``reason:<r>`` counts in the order the row path first meets
    them (Arrow's dictionary encoding numbers values by first appearance)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = pc.if_else(pa.array(kept), "kept",
                        pc.binary_join_element_wise("reason:", pa.array(reasons.tolist(), pa.string()), ""))
    encoded = labels.dictionary_encode()
    tally = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), minlength=len(encoded.dictionary))
    counts = Counter({"rows_read": len(kept)})
    counts.update(dict(zip(encoded.dictionary.to_pylist(), tally.tolist())))
    return counts


def alive_columnar(part, select_stages, index: int, embeddings: tuple = (), infos: dict | None = None):
    """(the part's columns, bool mask of the rows alive when ``select_stages[index]`` is reached): what
    a summary-staged stage's by-part passes read (shard_work.part_summary). None: not columnar here."""
    if not enabled():
        return None
    view = load_part(part, embeddings)
    if view is None:
        return None
    d = _decide(view, select_stages[:index], infos)
    return None if d is None else (view, d.alive)


def rank_keys_columnar(part, select_stages, rank_index: int, embeddings: tuple = (), infos: dict | None = None):
    """``shard_work.part_rank_keys`` without rows for a rank stage after others (the first stage of
    a recipe is already ranked from one column there): the stages before it decide on arrays, the
    alive rows' values become the key batch. None: not columnar-capable here."""
    if not enabled() or rank_index == 0:
        return None
    from beam_filter.rules.exact_rank import key_batch

    spec = select_stages[rank_index].rank_spec()
    columns = spec.columns or ((spec.value,) if isinstance(spec.value, str) else ())
    view = load_part(part, embeddings)
    if view is None or not columns:
        return None
    column = next((c for c in columns if view.has(c)), None)
    values = None if column is None else view.floats(column)
    if values is None:
        return None
    d = _decide(view, select_stages[:rank_index], infos)
    if d is None:
        return None
    return key_batch(values[d.alive])
