"""Everything report.html shows, computed from ``decisions/*.parquet`` and ``report.json``.

The counts come from the decisions themselves, not from report.json, so the
page shows what is on disk (a mismatch with report.json becomes a warning on
the page). Decisions can hold 10M+ rows, so nothing here loads them whole:

* pass 1 reads parquet footers only (schemas, row counts, min/max statistics
  of the score columns, for histogram bins);
* pass 2 reads one file at a time, only the columns the report uses, and folds
  it into small accumulators (counters, fixed-bin histograms, a co-failure
  matrix, the few sample rows the thumbnail grids show).

Thumbnail samples are chosen deterministically: per group ("kept" or a drop
reason), the rows with the smallest ``uid_hashes(uid)`` (a 64-bit hash).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import re
from collections import Counter
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_filter import fsio, tables
from beam_filter import records as R
from beam_filter.errors import UserError
from beam_filter.addback import REASON_PREFIX as ADDED_BACK_PREFIX
from beam_filter.layout import OutputLayout
from beam_filter.readahead import read_ahead

READ_STAGE = "read"
KEPT_GROUP = "kept"
FAILED_STAGES = "failed_stages"   # optional list<str> column: every stage a row fails
HIST_BINS = 40
TEXT_BOXES = "text_boxes"          # text_detect's polygons: drawn on the thumbnails (stages/ocr.py)
OCR_TEXT = "ocr_text"              # ... and what it read, shown under them
_SAMPLE_COLUMNS = (R.UID, R.SHARD, R.KEY, R.KEPT, R.COPIES, R.REASON, R.STAGE, R.CAPTION,
                   R.WIDTH, R.HEIGHT, R.URL, R.READ_ERROR, TEXT_BOXES, OCR_TEXT)


def reason_class(reason: str | None) -> str | None:
    """``"near_duplicate_of:<uid>"`` -> ``"near_duplicate_of"`` (scan applies the same rule with pyarrow)."""
    if reason is None:
        return None
    return reason.split(":", 1)[0]


@dataclasses.dataclass
class FunnelStep:
    stage: str
    type: str
    n_in: int
    dropped: int
    n_out: int
    added: int = 0      # rows the recipe's add_back section kept again (addback.py)


@dataclasses.dataclass
class ReasonCount:
    reason: str
    stage: str
    count: int


@dataclasses.dataclass
class ShardCount:
    shard: str
    kept: int
    dropped: int


@dataclasses.dataclass
class Histogram:
    column: str
    edges: np.ndarray
    kept: np.ndarray
    dropped: np.ndarray
    missing: int
    thresholds: list[tuple[str, float]]   # (stage id, threshold) applied on this column


@dataclasses.dataclass
class ClusterSizes:
    column: str
    sizes: np.ndarray    # rows per cluster, sorted descending
    kept: np.ndarray     # kept rows of the same clusters, same order
    missing: int
    # Per-cluster values a stage recorded beside ``<id>_cluster`` (dbp: ``<id>_complexity``,
    # ``<id>_allocation``), keyed by suffix, same order as ``sizes``; "id" holds the cluster ids.
    stats: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Overlap:
    stages: list[str]
    matrix: np.ndarray   # [i, j] = rows that fail both stage i and stage j; diagonal = fail i
    only: np.ndarray     # rows failing this stage and no other
    any_fail: int
    sources: list[str]   # how "fails" was known, for the page to say so
    complete: bool       # True when a failed_stages column lists every failing stage


@dataclasses.dataclass
class ReportData:
    output_dir: str
    meta: dict
    files: list[str]
    total: int
    kept: int
    kept_with_copies: int
    dropped: int
    funnel: list[FunnelStep]
    reasons: list[ReasonCount]
    shards: list[ShardCount]
    histograms: list[Histogram]
    clusters: list[ClusterSizes]
    overlap: Overlap | None
    samples: dict[str, list[dict]]       # group -> sample rows, smallest uid hash first
    group_order: list[str]
    warnings: list[str]
    added_back: dict = dataclasses.field(default_factory=dict)   # add-back stage id -> rows added


def load_meta(output_dir: str) -> tuple[dict, list[str]]:
    """report.json as a dict ({} when absent), plus warnings."""
    path = OutputLayout(output_dir).report_json
    if not fsio.exists(path):
        return {}, ["report.json not found: funnel order, timings and provenance are missing"]
    try:
        meta = json.loads(fsio.read_bytes(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return {}, [f"report.json is not valid JSON ({e}); it was ignored"]
    if not isinstance(meta, dict):
        return {}, ["report.json is not a JSON object; it was ignored"]
    return meta, []


# ---------------------------------------------------------------------------------------
# column selection (footers only)
# ---------------------------------------------------------------------------------------

def _is_number(t: pa.DataType) -> bool:
    return (pa.types.is_integer(t) or pa.types.is_floating(t)) and not pa.types.is_boolean(t)


def _histogram_columns(schema: dict[str, pa.DataType], thresholds: dict) -> list[str]:
    """Scores worth a histogram: numeric ``*_score`` and ``*_fraction`` (face / text area) columns
    and every thresholded column."""
    cols = {n for n, t in schema.items() if _is_number(t) and n.endswith(("_score", "_fraction"))}
    for spec in thresholds.values():
        col = spec.get("column") if isinstance(spec, dict) else None
        if col in schema and _is_number(schema[col]):
            cols.add(col)
    return sorted(cols)


CLUSTER_STAT_SUFFIXES = ("complexity", "allocation")


def _cluster_stat_columns(schema: dict[str, pa.DataType], cluster_col: str) -> dict[str, str]:
    """suffix -> column of the per-cluster values recorded beside an ``<id>_cluster`` column."""
    if not cluster_col.endswith("_cluster"):
        return {}
    base = cluster_col[:-len("cluster")]
    return {s: base + s for s in CLUSTER_STAT_SUFFIXES if base + s in schema}


def _cluster_columns(schema: dict[str, pa.DataType]) -> list[str]:
    return sorted(n for n, t in schema.items()
                  if pa.types.is_integer(t) and (n == "cluster" or n.endswith("_cluster")
                                                 or n.startswith("cluster_")))


def _fixed_cuts(meta: dict) -> dict[str, dict]:
    """{stage id: {"column", "threshold"}} of the fixed cuts the recipe's stages apply
    (``Stage.fixed_cut``, e.g. text_area's max_fraction), shaped like thresholds/ entries so the
    histogram of that column shows the cut. A stage that no longer builds is skipped."""
    from beam_filter.registry import build_stage

    out = {}
    for st in (meta.get("recipe") or {}).get("stages") or []:
        if not isinstance(st, dict) or not isinstance(st.get("id"), str):
            continue
        try:
            cut = build_stage(st["id"], str(st.get("type")), dict(st.get("params") or {})).fixed_cut()
        except Exception:  # noqa: BLE001 - an old or foreign recipe: no cut drawn, the page still renders
            continue
        if cut is not None:
            out[st["id"]] = {"column": cut[0], "threshold": float(cut[1])}
    return out


def _thresholds_by_column(thresholds: dict) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for stage_id in sorted(thresholds):
        spec = thresholds[stage_id]
        if not isinstance(spec, dict):
            continue
        col, thr = spec.get("column"), spec.get("threshold")
        if isinstance(col, str) and isinstance(thr, (int, float)) and not isinstance(thr, bool):
            out.setdefault(col, []).append((stage_id, float(thr)))
    return out


@dataclasses.dataclass
class _Footers:
    """What the parquet footers say: column types, per-file columns, min/max of numeric columns."""

    schema: dict[str, pa.DataType]
    columns: list[frozenset]                   # per file
    lo: dict[str, float]
    hi: dict[str, float]
    no_stats: list[set]                        # per file: numeric columns without usable statistics


def _read_footers(paths: list[str]) -> _Footers:
    """One footer read per file, each file closed again (a run can have 10k+ decision files)."""
    ft = _Footers({}, [], {}, {}, [])
    for path in paths:
        md = tables.parquet_metadata(path)
        arrow = md.schema.to_arrow_schema()
        for field in arrow:
            ft.schema.setdefault(field.name, field.type)
        ft.columns.append(frozenset(arrow.names))
        numeric = {f.name for f in arrow if _is_number(f.type)}
        missing_stats: set = set()
        for j in range(md.num_columns):
            name = md.schema.column(j).path
            if name not in numeric:
                continue
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                st = rg.column(j).statistics
                if rg.num_rows == 0 or (st is not None and st.null_count == rg.num_rows):
                    continue
                if st is None or not st.has_min_max:
                    missing_stats.add(name)
                    break
                lo, hi = float(st.min), float(st.max)
                if np.isfinite(lo) and np.isfinite(hi):
                    ft.lo[name] = min(ft.lo.get(name, np.inf), lo)
                    ft.hi[name] = max(ft.hi.get(name, -np.inf), hi)
        ft.no_stats.append(missing_stats)
    return ft


def _column_ranges(paths: list[str], ft: _Footers, columns: list[str]) -> dict[str, tuple[float, float]]:
    """Global (min, max) per column: footer statistics, reading the column only where they lack."""
    lo = {c: ft.lo.get(c, np.inf) for c in columns}
    hi = {c: ft.hi.get(c, -np.inf) for c in columns}
    for path, no_stats in zip(paths, ft.no_stats):
        need = sorted(no_stats & set(columns))
        if not need:
            continue
        tbl = tables.read_table(path, need)
        for c in need:
            v = _as_float(tbl.column(c))
            v = v[np.isfinite(v)]
            if v.size:
                lo[c] = min(lo[c], float(v.min()))
                hi[c] = max(hi[c], float(v.max()))
    return {c: (lo[c], hi[c]) for c in columns if np.isfinite(lo[c])}


def _bin_edges(lo: float, hi: float, integer: bool, thresholds: list[tuple[str, float]]) -> np.ndarray:
    for _, t in thresholds:
        lo, hi = min(lo, t), max(hi, t)
    if integer and hi - lo <= 60:
        return np.arange(np.floor(lo) - 0.5, np.floor(hi) + 1.5, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HIST_BINS + 1)


def _string_column(tbl: pa.Table, name: str):
    """A string column of ``tbl``, or all nulls when the file lacks it."""
    if name not in tbl.column_names:
        return pa.nulls(tbl.num_rows, pa.string())
    col = tbl.column(name)
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def _dictionary(column) -> tuple[list, np.ndarray]:
    """(distinct values in order of appearance, each row's index into them) of a column; a null
    is a value too (None, last)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    enc = pc.dictionary_encode(arr)
    values = enc.dictionary.to_pylist()
    idx = np.asarray(pc.fill_null(enc.indices, len(values)).to_numpy(zero_copy_only=False), np.int64)
    return (values + [None]) if enc.indices.null_count else values, idx


class _RowCodes:
    """One decisions file's stage, reason and reason class per row, as codes into its handful of
    distinct values: the scan counts them with ``np.bincount`` and works out each distinct value's
    class once, instead of string kernels and group-bys over every row.

    * ``stages``/``stage``: the stage names (a null is "unknown") and each row's index;
    * ``reasons``/``reason``: the reasons (a null is None) and each row's index;
    * ``classes``/``cls``: each row's reason class: the reason's prefix before ":" (Arrow's regex,
      on the distinct reasons), or ``dropped_by_<stage>`` for a row without a reason.
    """

    def __init__(self, tbl: pa.Table, kept: np.ndarray):
        stages, self.stage = _dictionary(_string_column(tbl, R.STAGE))
        self.stages = ["unknown" if s is None else s for s in stages]
        self.reasons, self.reason = _dictionary(_string_column(tbl, R.REASON))
        named = [r for r in self.reasons if r is not None]
        prefixes = pc.replace_substring_regex(pa.array(named, pa.string()), pattern=":.*$",
                                              replacement="").to_pylist()
        codes: dict[str, int] = {}
        by_reason = [codes.setdefault(p, len(codes)) for p in prefixes] + [-1] * (len(self.reasons) - len(named))
        by_stage = np.array([codes.setdefault(f"dropped_by_{s}", len(codes)) for s in self.stages], np.int64)
        cls = np.array(by_reason, np.int64)[self.reason] if by_reason else np.full(len(kept), -1, np.int64)
        self.cls = np.where(cls >= 0, cls, by_stage[self.stage])
        self._codes = codes

    @property
    def classes(self) -> list[str]:
        return list(self._codes)

    def per_reason(self, values: list, missing) -> np.ndarray:
        """``values[i]`` for the i-th distinct reason, spread to the rows (``missing`` for a null)."""
        table = np.array([missing if r is None else v for r, v in zip(self.reasons, values)] or [missing])
        return table[self.reason] if self.reasons else np.full(len(self.reason), missing)

    def pair_counts(self, codes: np.ndarray, mask: np.ndarray, names: list):
        """((names[code], stage), rows) for each (code, stage) pair among the rows in ``mask``."""
        width = len(self.stages)
        counts = np.bincount(codes[mask] * width + self.stage[mask])
        return [((names[p // width], self.stages[p % width]), int(counts[p])) for p in np.flatnonzero(counts)]

    def groups(self, kept: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(group names, each row's group): ``KEPT_GROUP`` for a kept row, else its reason class."""
        codes = dict(self._codes)
        kept_code = codes.setdefault(KEPT_GROUP, len(codes))
        return list(codes), np.where(kept, kept_code, self.cls)


def _bin_counts(values: np.ndarray, kept: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values[kept], edges)[0]`` and the same of ``~kept``, from one bin lookup.

    Same bins as numpy's (``[e_i, e_i+1)``, the last one closed, values outside dropped), for
    finite values and increasing edges; numpy sorts the data on every call, twice per column
    and file here.
    """
    nbins = len(edges) - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = nbins - 1
    inside = (idx >= 0) & (idx < nbins)
    return (np.bincount(idx[inside & kept], minlength=nbins)[:nbins],
            np.bincount(idx[inside & ~kept], minlength=nbins)[:nbins])


def _smallest(idx: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """``idx[np.argsort(keys, kind="stable")[:n]]`` without sorting every key: the keys up to the
    n-th smallest are picked first (ties at it included), then sorted stably."""
    if keys.size > 4 * n > 0:
        cut = np.partition(keys, n - 1)[n - 1]
        pick = np.flatnonzero(keys <= cut)
        return idx[pick[np.argsort(keys[pick], kind="stable")[:n]]]
    return idx[np.argsort(keys, kind="stable")[:n]]


def _as_float(col) -> np.ndarray:
    return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


# ---------------------------------------------------------------------------------------
# accumulators (pass 2)
# ---------------------------------------------------------------------------------------

class _ClusterAcc:
    """Rows and kept rows per cluster id, merged in amortised O(n) (ids may be any int64)."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.kept = np.zeros(0, np.int64)
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self.missing = 0
        self.stats: dict[str, dict[int, float]] = {}     # suffix -> {cluster id: value}

    def add_stat(self, name: str, ids: np.ndarray, values: np.ndarray) -> None:
        """One value per cluster (the same on each of its rows): the first seen is kept."""
        seen = self.stats.setdefault(name, {})
        u, first = np.unique(ids, return_index=True)
        for i, j in zip(u.tolist(), first.tolist()):
            seen.setdefault(i, float(values[j]))

    def add(self, ids: np.ndarray, kept: np.ndarray) -> None:
        u, inv = np.unique(ids, return_inverse=True)
        self._buf.append((u, np.bincount(inv, minlength=u.size),
                          np.bincount(inv, weights=kept, minlength=u.size).astype(np.int64)))
        self._buffered += u.size
        if self._buffered > 4 * self.ids.size + 1_000_000:
            self._reduce()

    def _reduce(self) -> None:
        if not self._buf:
            return
        ids = np.concatenate([self.ids] + [b[0] for b in self._buf])
        rows = np.concatenate([self.rows] + [b[1] for b in self._buf])
        kept = np.concatenate([self.kept] + [b[2] for b in self._buf])
        u, inv = np.unique(ids, return_inverse=True)
        self.ids = u
        self.rows = np.bincount(inv, weights=rows, minlength=u.size).astype(np.int64)
        self.kept = np.bincount(inv, weights=kept, minlength=u.size).astype(np.int64)
        self._buf, self._buffered = [], 0

    def result(self, column: str) -> ClusterSizes:
        self._reduce()
        order = np.lexsort((self.ids, -self.rows))     # biggest first, ties by id
        stats = {}
        if self.stats:
            stats["id"] = self.ids[order]
            for name, seen in self.stats.items():
                stats[name] = np.array([seen.get(int(i), np.nan) for i in self.ids[order]], np.float64)
        return ClusterSizes(column, self.rows[order], self.kept[order], self.missing, stats)


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_SEED = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit flips about half of the output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def uid_hashes(col) -> np.ndarray:
    """A 64-bit hash of each uid's UTF-8 text (``str(uid)``: a null is "None"), as uint64.

    What the report ranks rows by to pick its sample rows: deterministic, spread evenly, and
    a function of the uid alone (not of the file, the batch or its longest uid). Defined on
    the bytes zero-padded to 8-byte little-endian words: ``h = mix(len ^ SEED)``, then
    ``h = mix(h ^ word)`` per word (:func:`_mix64`, splitmix64's finaliser), so it runs as a
    few numpy operations per word position over the whole column, straight from the Arrow
    buffers. A sha256 per uid took a third of a 1.28M-row report scan.
    """
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pa.array([str(u) for u in col.to_pylist()], pa.large_string())
    arr = pc.cast(pc.fill_null(col, "None"), pa.large_binary())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.large_binary())
    n = len(arr)
    if n == 0:
        return np.empty(0, np.uint64)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, count=n + 1, offset=arr.offset * 8)
    lengths = np.diff(offsets)
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buf, np.uint8, count=last - first, offset=first) if last > first \
        else np.empty(0, np.uint8)
    words = (lengths + 7) // 8
    width = int(words.max())
    padded = np.zeros((n, max(width, 1) * 8), np.uint8)
    if lengths.min() == lengths.max():          # equal-length uids (DataComp's hex): one reshape
        padded[:, :lengths[0]] = data.reshape(n, int(lengths[0]))
    elif data.size:
        rows = np.repeat(np.arange(n), lengths)
        padded[rows, np.arange(data.size) - np.repeat(offsets[:-1] - first, lengths)] = data
    matrix = padded.view("<u8")
    h = _mix64(lengths.astype(np.uint64) ^ _SEED)
    every_row = int(words.min())            # word positions all uids reach: no mask needed
    for j in range(width):
        step = _mix64(h ^ matrix[:, j])
        h = step if j < every_row else np.where(words > j, step, h)
    return h


class _SampleAcc:
    """The ``n`` rows with the smallest uid hash (:func:`uid_hashes`) per group, across files."""

    def __init__(self, n: int):
        self.n = n
        self.best: dict[str, list[tuple]] = {}

    def add(self, tbl: pa.Table, groups: tuple[list[str], np.ndarray], extra_cols: list[str],
            hashes: np.ndarray | None = None) -> None:
        """``groups``: (group names, each row's index into them); ``hashes``: the rows'
        :func:`uid_hashes` when already taken."""
        if self.n <= 0 or tbl.num_rows == 0:
            return
        if hashes is None:
            hashes = uid_hashes(tbl.column(R.UID))
        names, codes = groups
        cols = [c for c in _SAMPLE_COLUMNS + tuple(extra_cols) if c in tbl.column_names]
        small = tbl.select(cols)
        for code, g in enumerate(names):
            idx = np.flatnonzero(codes == code)
            if idx.size == 0:
                continue
            top = _smallest(idx, hashes[idx], self.n)
            rows = small.take(pa.array(top)).to_pylist()
            cands = [(f"{hashes[i]:016x}", str(r.get(R.SHARD)), str(r.get(R.KEY)), r)
                     for i, r in zip(top.tolist(), rows)]
            self.best[g] = heapq.nsmallest(self.n, self.best.get(g, []) + cands, key=lambda c: c[:3])

    def result(self) -> dict[str, list[dict]]:
        return {g: [dict(c[3], uid_hash=c[0]) for c in cands] for g, cands in sorted(self.best.items())}


class _OverlapAcc:
    """Co-failure counts between stages: which filters a row fails, dropped or not."""

    def __init__(self, stages: list[str], thresholds: dict, columns: set[str]):
        self.stages = list(stages)
        self.index = {s: i for i, s in enumerate(stages)}
        self.matrix = np.zeros((len(stages), len(stages)), np.int64)
        self.only = np.zeros(len(stages), np.int64)
        self.any_fail = 0
        self.unknown: Counter = Counter()
        self.checks = []   # (stage index, column, threshold, keep_below)
        for sid in sorted(thresholds):
            spec = thresholds[sid]
            if not isinstance(spec, dict) or sid not in self.index:
                continue
            col, thr = spec.get("column"), spec.get("threshold")
            if col in columns and isinstance(thr, (int, float)) and not isinstance(thr, bool):
                below = str(spec.get("keep", "above")).lower() == "below"
                self.checks.append((self.index[sid], col, float(thr), below))

    @property
    def columns(self) -> list[str]:
        return sorted({c[1] for c in self.checks})

    def _grow(self, stage: str) -> int:
        """A stage seen in the data but not in report.json gets an axis too."""
        self.index[stage] = len(self.stages)
        self.stages.append(stage)
        k = len(self.stages)
        m = np.zeros((k, k), np.int64)
        m[: k - 1, : k - 1] = self.matrix
        self.matrix, self.only = m, np.append(self.only, 0)
        return k - 1

    def add(self, tbl: pa.Table, stages: list[str], drop_stage: np.ndarray) -> None:
        """``drop_stage``: each row's index into ``stages``, the stage that dropped it (-1 when kept)."""
        n = tbl.num_rows
        dropped_by = np.unique(drop_stage[drop_stage >= 0])
        for s in (stages[i] for i in dropped_by.tolist()):
            if s != READ_STAGE and s not in self.index:
                self._grow(s)
        fails = np.zeros((n, len(self.stages)), dtype=bool)
        axis = np.array([self.index.get(s, -1) for s in stages] + [-1], np.int64)[drop_stage]
        marked = np.flatnonzero(axis >= 0)
        fails[marked, axis[marked]] = True
        for j, col, thr, below in self.checks:
            if col in tbl.column_names:
                v = _as_float(tbl.column(col))
                with np.errstate(invalid="ignore"):
                    fails[:, j] |= (v > thr) if below else (v < thr)
        if FAILED_STAGES in tbl.column_names:
            lists = tbl.column(FAILED_STAGES).combine_chunks()
            if pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type):
                self._mark_listed(fails, lists)
        self._count(fails)

    def _count(self, fails: np.ndarray) -> None:
        """Add the rows' co-failures, counted per distinct set of failed stages: a file has a
        handful of such patterns, so the k x k sums cost k² per pattern instead of per row."""
        k = fails.shape[1]
        if k > 62:          # patterns do not fit an int64: per row
            bits, counts = fails.astype(np.int64), np.ones(len(fails), np.int64)
        else:
            code = np.zeros(len(fails), np.int64)
            for j in range(k):
                code |= fails[:, j].astype(np.int64) << j
            patterns, counts = np.unique(code, return_counts=True)
            bits = (patterns[:, None] >> np.arange(k)) & 1
        self.matrix += (bits * counts[:, None]).T @ bits
        per_pattern = bits.sum(axis=1)
        self.only += (bits * counts[:, None])[per_pattern == 1].sum(axis=0)
        self.any_fail += int(counts[per_pattern > 0].sum())

    def _mark_listed(self, fails: np.ndarray, lists) -> None:
        """``fails[row, stage] = True`` for every stage a row's failed_stages list names (known
        stages; others counted in ``unknown``, read errors skipped: they are not a filter).
        One ``index_in`` over the flattened lists instead of a Python step per entry."""
        flat = pc.list_flatten(lists)
        parents = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False))
        if not (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)):
            for p, s in zip(parents, flat.to_pylist()):
                j = self.index.get(s)
                if j is None:
                    if s != READ_STAGE:
                        self.unknown[s] += 1
                else:
                    fails[p, j] = True
            return
        names = pa.array(sorted(self.index, key=self.index.get), flat.type)
        pos = pc.index_in(flat, value_set=names)
        found = np.asarray(pos.is_valid().to_numpy(zero_copy_only=False), bool)
        if found.any():
            cols = np.asarray(pos.filter(pa.array(found)).to_numpy(zero_copy_only=False), np.int64)
            fails[parents[found], cols] = True
        if not found.all():
            other = pa.table({"s": flat.filter(pa.array(~found))})
            for rec in other.group_by("s").aggregate([([], "count_all")]).to_pylist():
                if rec["s"] != READ_STAGE:
                    self.unknown[rec["s"]] += rec["count_all"]

    def result(self, has_failed_column: bool, order: list[str]) -> Overlap:
        """The matrix with its axes in funnel ``order``."""
        sources = ["the stage that dropped each row"]
        if self.checks:
            sources.append("score thresholds of " + ", ".join(
                sorted({self.stages[c[0]] for c in self.checks})) + " evaluated on every row")
        if has_failed_column:
            sources.append(f"the {FAILED_STAGES} column")
        rank = {s: i for i, s in enumerate(order)}
        perm = sorted(range(len(self.stages)), key=lambda i: (rank.get(self.stages[i], len(rank)), self.stages[i]))
        return Overlap([self.stages[i] for i in perm], self.matrix[np.ix_(perm, perm)], self.only[perm],
                       self.any_fail, sources, has_failed_column)


# ---------------------------------------------------------------------------------------
# the scan
# ---------------------------------------------------------------------------------------

def _stage_order(meta: dict, seen_stages: set[str]) -> list[tuple[str, str]]:
    """(stage id, type) in pipeline order: read, recipe stages, then any others seen (sorted)."""
    order: list[tuple[str, str]] = [(READ_STAGE, "read")]
    for step in meta.get("funnel") or []:
        if isinstance(step, dict) and isinstance(step.get("stage"), str) and step["stage"] != READ_STAGE:
            order.append((step["stage"], str(step.get("type") or "")))
    if len(order) == 1:
        for st in (meta.get("recipe") or {}).get("stages") or []:
            if isinstance(st, dict) and isinstance(st.get("id"), str):
                order.append((st["id"], str(st.get("type") or st["id"])))
    known = {s for s, _ in order}
    order += [(s, "") for s in sorted(seen_stages - known)]
    return order


def scan(output_dir: str, samples_per_group: int = 8, folded: Folded | None = None) -> ReportData:
    """Read ``output_dir`` (decisions + report.json) into a :class:`ReportData`.

    ``folded``: the decisions already read by :func:`fold_decisions` (finalize does that while it
    counts the decisions for report.json); used only if it was folded with what this report.json
    says about thresholds and stages, else the decisions are read again.
    """
    meta, warnings = load_meta(output_dir)
    if folded is None or folded.basis != _fold_basis(meta) or folded.samples.n != samples_per_group:
        folded = fold_decisions(output_dir, meta, samples_per_group)
    return _finish(folded, meta, warnings)


class Folded(NamedTuple):
    """Everything the report counts in one pass over the decisions files (:func:`fold_decisions`)."""
    basis: tuple
    output_dir: str
    paths: list
    schema: dict
    total: int
    kept: int
    copies: int
    stage_drops: Counter
    reasons: Counter
    added_back: Counter
    shard_counts: dict
    edges: dict
    hist_kept: dict
    hist_drop: dict
    hist_missing: Counter
    thr_by_col: dict
    cluster_acc: dict
    overlap: Any
    samples: Any


def _fold_inputs(meta: dict) -> tuple[dict, list[tuple[str, str]]]:
    """What a fold reads from report.json: the thresholds drawn (fixed cuts included) and the stages."""
    thresholds = meta.get("thresholds") if isinstance(meta.get("thresholds"), dict) else {}
    return {**_fixed_cuts(meta), **thresholds}, _stage_order(meta, set())


def _fold_basis(meta: dict) -> tuple:
    """:func:`_fold_inputs` as a comparable value (``Folded.basis``)."""
    return _basis(*_fold_inputs(meta))


def _basis(thresholds: dict, order: list) -> tuple:
    return json.dumps(thresholds, sort_keys=True), tuple(order)


def fold_decisions(output_dir: str, meta: dict, samples_per_group: int = 8) -> Folded:
    """One pass over ``output_dir``'s decisions files: counts, histograms, clusters, co-failures and
    sample rows. ``meta``: report.json's content, or what finalize is about to write there (only
    its recipe, thresholds and funnel stages are read: :func:`_fold_basis`)."""
    paths = OutputLayout(output_dir).decision_files()
    if not paths:
        raise UserError(f"no decisions/*.parquet under {output_dir}: run `beam-filter select` first")
    ft = _read_footers(paths)
    schema = ft.schema
    missing = [c for c in (R.UID, R.KEPT) if c not in schema]
    if missing:
        raise UserError(f"{output_dir}/decisions: parquet files lack column(s) {missing}")

    thresholds, order = _fold_inputs(meta)
    thr_by_col = _thresholds_by_column(thresholds)
    hist_cols = _histogram_columns(schema, thresholds)
    ranges = _column_ranges(paths, ft, hist_cols)
    edges = {c: _bin_edges(*ranges[c], pa.types.is_integer(schema[c]), thr_by_col.get(c, []))
             for c in hist_cols if c in ranges}
    hist_kept = {c: np.zeros(len(e) - 1, np.int64) for c, e in edges.items()}
    hist_drop = {c: np.zeros(len(e) - 1, np.int64) for c, e in edges.items()}
    hist_missing = Counter()
    cluster_cols = _cluster_columns(schema)
    cluster_acc = {c: _ClusterAcc() for c in cluster_cols}

    overlap = _OverlapAcc([st for st, _ in order if st != READ_STAGE], thresholds, set(schema))

    wanted = set(_SAMPLE_COLUMNS) | set(hist_cols) | set(cluster_cols) | set(overlap.columns)
    cluster_stats = {c: _cluster_stat_columns(schema, c) for c in cluster_cols}
    wanted |= {col for st in cluster_stats.values() for col in st.values()}
    if FAILED_STAGES in schema:
        wanted.add(FAILED_STAGES)
    samples = _SampleAcc(samples_per_group)
    total = kept_n = copies_n = 0
    stage_drops: Counter = Counter()
    reasons: Counter = Counter()
    added_back: Counter = Counter()
    shard_counts: dict[str, list[int]] = {}

    def read(item):
        """One file's columns, and its uid hashes when sample rows are shown: both in the
        read-ahead thread, overlapping the Arrow work on the previous file."""
        path, file_cols = item
        tbl = tables.read_table(path, sorted(file_cols & wanted))
        return tbl, (uid_hashes(tbl.column(R.UID)) if samples.n > 0 and tbl.num_rows else None)

    for (path, file_cols), (tbl, hashes) in read_ahead(list(zip(paths, ft.columns)), read):
        cols = sorted(file_cols & wanted)
        n = tbl.num_rows
        if n == 0:
            continue
        kept = np.asarray(pc.fill_null(tbl.column(R.KEPT), False).to_numpy(zero_copy_only=False), bool)
        copies = (np.asarray(pc.fill_null(tbl.column(R.COPIES), 0).to_numpy(zero_copy_only=False), np.int64)
                  if R.COPIES in cols else kept.astype(np.int64))
        total += n
        kept_n += int(kept.sum())
        copies_n += int(copies[kept].sum())
        rows = _RowCodes(tbl, kept)
        dropped = ~kept
        # dropped rows by (reason class, stage); added-back rows (addback.py) by (reason, stage):
        # dropped at `stage` in the funnel, then added by the section
        for (cls, st), c in rows.pair_counts(rows.cls, dropped, rows.classes):
            stage_drops[st] += c
            reasons[(cls, st)] += c
        added = kept & rows.per_reason([r is not None and r.startswith(ADDED_BACK_PREFIX) for r in rows.reasons], False)
        for (reason, st), c in rows.pair_counts(rows.reason, added, rows.reasons):
            added_back[reason[len(ADDED_BACK_PREFIX):]] += c
            stage_drops[st] += c
        names, shard_idx = (_dictionary(pc.cast(tbl.column(R.SHARD), pa.string())) if R.SHARD in cols
                            else ([path], np.zeros(n, np.int64)))
        rows_per = np.bincount(shard_idx, minlength=len(names))
        kept_per = np.bincount(shard_idx[kept], minlength=len(names))
        for i in np.flatnonzero(rows_per):
            c = shard_counts.setdefault(names[i], [0, 0])
            c[0] += int(kept_per[i])
            c[1] += int(rows_per[i] - kept_per[i])
        for c, e in edges.items():
            if c not in cols:
                hist_missing[c] += n
                continue
            v = _as_float(tbl.column(c))
            ok = np.isfinite(v)
            hist_missing[c] += int((~ok).sum())
            k, d = _bin_counts(v[ok], kept[ok], e)
            hist_kept[c] += k
            hist_drop[c] += d
        for c, acc in cluster_acc.items():
            if c not in cols:
                acc.missing += n
                continue
            col = tbl.column(c)
            valid = np.asarray(pc.is_valid(col).to_numpy(zero_copy_only=False), bool)
            acc.missing += int((~valid).sum())
            ids = np.asarray(pc.drop_null(col).to_numpy(zero_copy_only=False), np.int64)
            acc.add(ids, kept[valid].astype(np.int64))
            for name, stat_col in cluster_stats[c].items():
                if stat_col in cols:
                    acc.add_stat(name, ids, _as_float(tbl.column(stat_col))[valid])
        overlap.add(tbl, rows.stages, np.where(dropped, rows.stage, -1))
        samples.add(tbl, rows.groups(kept), hist_cols, hashes)

    return Folded(_basis(thresholds, order), output_dir, paths, schema, total, kept_n, copies_n, stage_drops, reasons,
                  added_back, shard_counts, edges, hist_kept, hist_drop, hist_missing, thr_by_col, cluster_acc,
                  overlap, samples)


def _finish(f: Folded, meta: dict, warnings: list[str]) -> ReportData:
    """The page's numbers from a fold, ordered and checked against report.json ``meta``."""
    output_dir, paths, schema, total, kept_n, copies_n = f.output_dir, f.paths, f.schema, f.total, f.kept, f.copies
    stage_drops, reasons, added_back, shard_counts = f.stage_drops, f.reasons, f.added_back, f.shard_counts
    edges, hist_kept, hist_drop, hist_missing, thr_by_col = f.edges, f.hist_kept, f.hist_drop, f.hist_missing, \
        f.thr_by_col
    cluster_acc, overlap, samples = f.cluster_acc, f.overlap, f.samples
    warnings = list(warnings)
    order = _stage_order(meta, set(stage_drops))
    funnel, n_in = [], total
    for sid, stype in order:
        d = stage_drops.get(sid, 0)
        a = sum(added_back.values()) if stype == "add_back" else 0
        funnel.append(FunnelStep(sid, stype, n_in, d, n_in - d + a, a))
        n_in += a - d
    unknown = stage_drops.get("unknown", 0)
    if unknown:
        warnings.append(f"{unknown} dropped rows have no `stage`")
    warnings += _compare_with_meta(meta, total, kept_n, copies_n, funnel)
    if overlap.unknown:
        warnings.append("failed_stages lists stage ids not in the recipe: "
                        + ", ".join(f"{s} ({n})" for s, n in sorted(overlap.unknown.items())))

    reason_list = sorted((ReasonCount(r, s, n) for (r, s), n in reasons.items()),
                         key=lambda x: (-x.count, x.reason, x.stage))
    histograms = [Histogram(c, edges[c], hist_kept[c], hist_drop[c], hist_missing[c], thr_by_col.get(c, []))
                  for c in sorted(edges)]
    stage_rank = {s: i for i, (s, _) in enumerate(order)}
    reason_rank = {r.reason: (stage_rank.get(r.stage, len(stage_rank)), -r.count, r.reason) for r in reason_list}
    sample_rows = samples.result()
    group_order = ([KEPT_GROUP] if KEPT_GROUP in sample_rows else []) + sorted(
        (g for g in sample_rows if g != KEPT_GROUP), key=lambda g: reason_rank.get(g, (1 << 30, 0, g)))
    return ReportData(
        output_dir=output_dir, meta=meta, files=paths, total=total, kept=kept_n,
        kept_with_copies=copies_n, dropped=total - kept_n, funnel=funnel, reasons=reason_list,
        shards=[ShardCount(s, c[0], c[1]) for s, c in sorted(shard_counts.items(), key=lambda x: str(x[0]))],
        histograms=histograms, clusters=[acc.result(c) for c, acc in sorted(cluster_acc.items())],
        overlap=overlap.result(FAILED_STAGES in schema, [st for st, _ in order]) if overlap.stages else None,
        samples=sample_rows, group_order=group_order, warnings=warnings, added_back=dict(sorted(added_back.items())))


def _compare_with_meta(meta: dict, total: int, kept: int, copies: int, funnel: list[FunnelStep]) -> list[str]:
    """Say where report.json disagrees with the decisions on disk (the page shows the latter)."""
    out = []
    counts = meta.get("counts") if isinstance(meta.get("counts"), dict) else {}
    for name, value in (("samples", total), ("kept", kept), ("kept_with_copies", copies),
                        ("dropped", total - kept)):
        if name in counts and counts[name] != value:
            out.append(f"report.json counts.{name} = {counts[name]} but the decisions say {value}")
    by_stage = {s.stage: s for s in funnel}
    for step in meta.get("funnel") or []:
        if not isinstance(step, dict):
            continue
        mine = by_stage.get(step.get("stage"))
        if mine is not None and "dropped" in step and step["dropped"] != mine.dropped:
            out.append(f"report.json funnel: stage {step.get('stage')} dropped {step['dropped']} "
                       f"but the decisions say {mine.dropped}")
    return out


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A column or stage name made safe for a file name (report_hist_<name>.png)."""
    return _SAFE.sub("_", name).strip("._") or "x"


def jsonable(value: Any) -> Any:
    """numpy scalars -> Python, for json.dumps of sample rows and provenance."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
