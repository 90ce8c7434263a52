"""The work done on one shard where its bytes are: features, rows, and the fused process_shard.

Free of Beam imports on purpose: the local process pool (transforms/fused.py)
and the plain-loop benchmark import this module in fresh processes, and
``import apache_beam`` alone costs ~1.2 s per process.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import NamedTuple

from beam_filter import records as R
from beam_filter import tables
from beam_filter.reading import FileError, read_shard
from beam_filter.selection import decide_locally, decide_rows
from beam_filter.layout import OutputLayout, embeddings_beside
from beam_filter.tables import ShardKept, write_shard_tables


class StageClock:
    """Per-stage seconds and sample counts, accumulated in plain Python.

    Plain so that it also works in a local process pool; Beam counters
    (``stage_us:<id>``, ``stage_n:<id>``) are incremented from it by
    :func:`flush_clock`, and finalize.py reads them into report.json.
    """

    def __init__(self):
        self.totals: dict[str, list] = {}

    def add(self, stage_id: str, seconds: float, n: int = 1) -> None:
        t = self.totals.setdefault(stage_id, [0.0, 0])
        t[0] += seconds
        t[1] += n


FEATURE_ERROR = "feature_error"    # reason prefix: ``feature_error:<stage id>``
_log = logging.getLogger(__name__)
_warned_stages: set[str] = set()


def add_features(sample: R.Sample, stages, timers: StageClock | None = None) -> R.Sample:
    """Run every stage's cheap ``features`` hook on a usable sample (pure apart from timers).

    A hook that raises on this sample makes it ``feature_error:<stage id>`` (a
    warning with the exception is logged once per stage and process); the job
    goes on with the next sample.
    """
    if sample.error is not None:
        return sample
    for stage in stages:
        t0 = time.perf_counter()
        try:
            cols = stage.features(sample)
        except Exception as e:  # noqa: BLE001 - one bad record must never take the job down
            _warn_once(stage.id, sample, e)
            sample.error = f"{FEATURE_ERROR}:{stage.id}"
            return sample
        finally:
            if timers is not None:
                timers.add(stage.id, time.perf_counter() - t0)
        if cols:
            sample.features.update(cols)
            if cols.get(R.READ_ERROR):
                sample.error = cols[R.READ_ERROR]
                return sample
    return sample


def _warn_once(stage_id: str, sample: R.Sample, e: Exception) -> None:
    if stage_id in _warned_stages:
        return
    _warned_stages.add(stage_id)
    _log.warning("stage %s failed on sample %r of %s (%s: %s); such samples are dropped as %s:%s "
                 "(logged once per stage)", stage_id, sample.key, sample.shard, type(e).__name__, e,
                 FEATURE_ERROR, stage_id, exc_info=e)


def score_row(sample: R.Sample) -> dict:
    """The byte-free row of a scored sample."""
    row = R.new_row(sample)
    row[R.READ_ERROR] = sample.error
    return row


class ShardResult(NamedTuple):
    kept: ShardKept | None
    errors: list            # FileError dicts
    counts: Counter         # samples_read, kept, reason:<r>, read_error:<e>
    clock: dict             # stage id -> [seconds, samples]


def process_shard(path: str, feature_stages, select_stages, layout: OutputLayout, metadata: dict,
                  resumed: bool = False) -> ShardResult:
    """Read, score and decide one shard; write its scores and decisions files.

    ``select_stages`` None: score only (``beam-filter score``), no decisions file.
    ``resumed``: the shard's scores file is valid for this recipe, so its rows
    come from there and only the decisions are recomputed (nothing at all when
    scoring only).
    Plain function: the plain-loop benchmark calls exactly this, so the Beam
    pipeline and the loop do the same work.
    """
    clock = StageClock()
    errors = []
    decide = select_stages is not None
    if resumed and not decide:
        return ShardResult(None, [], Counter(), clock.totals)
    if resumed:
        rows = [decide_locally(r, select_stages) for r in tables.read_rows(layout.scores(path))]
    else:
        rows = []
        for item in read_shard(path):
            if isinstance(item, FileError):
                errors.append(item.as_dict())
                continue
            row = score_row(add_features(item, feature_stages, clock))
            rows.append(decide_locally(row, select_stages) if decide else row)
    kept = None
    if rows:
        kept = write_shard_tables(layout, path, rows, write_scores=not resumed, write_decisions=decide,
                                  metadata=metadata)
    counts = Counter({"samples_read": len(rows)})
    for r in rows:
        if r.get(R.READ_ERROR):
            counts[f"read_error:{r[R.READ_ERROR]}"] += 1
        if decide:
            counts["kept" if r[R.KEPT] else f"reason:{r[R.REASON]}"] += 1
    counts["file_errors"] = len(errors)
    return ShardResult(kept, errors, counts, clock.totals)


def select_part(part, select_stages, layout: OutputLayout, metadata: dict,
                embeddings: tuple = ()) -> ShardResult:
    """The fused select of one input part: a scores file, or a DataComp metadata (parquet, npz) pair.

    Rows are read, decided by partwise stages (selection.is_partwise: per-row rules, fixed
    thresholds, row-wise group stages such as image_based) and written as that part's decisions
    file, in the worker that read them: no row crosses a shuffle, and memory is
    bounded by the largest part, not by the pool. The general graph
    (transforms/select.py) writes the same bytes (a test checks it).
    """
    if isinstance(part, (tuple, list)):
        from beam_filter.datacomp_metadata import iter_metadata_rows

        parquet, npz = part
        rows = list(iter_metadata_rows(parquet, npz, list(embeddings) if npz else None))
    else:       # a scores file of a score run
        rows = tables.read_rows(part, embeddings_beside(part))
    rows = decide_rows(rows, select_stages)
    kept = None
    if rows:
        kept = write_shard_tables(layout, rows[0][R.SHARD], rows, write_scores=False, write_decisions=True,
                                  metadata=metadata)
    counts = Counter({"rows_read": len(rows)})
    for r in rows:
        counts["kept" if r[R.KEPT] else f"reason:{r[R.REASON]}"] += 1
    return ShardResult(kept, [], counts, {})


def process_shard_path(path: str, feature_stages, select_stages, layout: OutputLayout, metadata: dict,
                       resumed: frozenset = frozenset()) -> ShardResult:
    """process_shard with ``resumed`` given as the set of resumed shards (the pool's call shape)."""
    return process_shard(path, feature_stages, select_stages, layout, metadata, resumed=path in resumed)

