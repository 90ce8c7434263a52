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

from beam_filter import columnar
from beam_filter import records as R
from beam_filter import tables
from beam_filter.reading import FileError, read_shard
from beam_filter.selection import advance_rows, decide_locally, decide_rows
from beam_filter.layout import OutputLayout, embeddings_beside, is_work_rows
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


class LoadedModel(NamedTuple):
    """A model stage with its handler and the model that handler loaded (once per worker)."""

    stage: object
    handler: object
    model: object

    def batch_size(self) -> int:
        kwargs = self.handler.batch_elements_kwargs() or {}
        size = kwargs.get("max_batch_size") or getattr(self.stage.p, "batch_size", None) or 64
        return max(1, int(size))


def load_models(model_stages) -> list[LoadedModel]:
    """The stages' models, loaded; consecutive stages sharing one image decode become one
    ``models/shared_decode.DecodeGroup`` entry, as ``transforms/score.RunModelStages`` runs them."""
    from beam_filter.models.shared_decode import plan

    out = []
    for stage in plan(model_stages):
        handler = stage.model_handler()
        out.append(LoadedModel(stage, handler, handler.load_model()))
    return out


def apply_models(samples: list[R.Sample], models: list[LoadedModel], clock: StageClock | None = None) -> None:
    """Run each model stage over ``samples`` in its handler's batch size, as RunModelStages does
    through RunInference: the same inputs, the same columns, the same reasons
    (``feature_error:<stage>`` when its input cannot be built, ``model_error:<stage>`` when its
    output cannot be read), samples already unusable skip the models. A ``DecodeGroup`` entry
    (``load_models``) runs its members on one decode per image and merges their outputs in order."""
    group = None
    if models:
        from beam_filter.models.shared_decode import DecodeGroup as group
    for m in models:
        stage = m.stage
        ready, inputs = [], []
        for sample in samples:
            if sample.error is not None:
                continue
            try:
                inputs.append(stage.model_input(sample))
                ready.append(sample)
            except Exception as e:  # noqa: BLE001 - one bad record never fails the job
                _log.warning("stage %s: model input failed for %s/%s: %s: %s",
                             stage.id, sample.shard, sample.key, type(e).__name__, e)
                sample.error = f"{FEATURE_ERROR}:{stage.id}"
        size = m.batch_size()
        for i in range(0, len(ready), size):
            t0 = time.perf_counter()
            results = list(m.handler.run_inference(inputs[i:i + size], m.model))
            if clock is not None:
                clock.add(stage.id, time.perf_counter() - t0, len(results))
            for sample, result in zip(ready[i:i + size], results):
                if group is not None and isinstance(stage, group):
                    stage.merge_group_output(sample, getattr(result, "inference", result),
                                             merge_model_output, _input_failed)
                else:
                    merge_model_output(stage, sample, result)


def _input_failed(stage, sample: R.Sample) -> R.Sample:
    """A shared-decode group member whose input could not be built (logged where it was built)."""
    sample.error = f"{FEATURE_ERROR}:{stage.id}"
    return sample


def merge_model_output(stage, sample: R.Sample, result) -> R.Sample:
    """One model output into the sample's columns (handlers may return Beam's PredictionResult)."""
    try:
        cols = stage.model_columns(getattr(result, "inference", result))
    except Exception as e:  # noqa: BLE001 - an output the stage cannot read drops that sample only
        _log.warning("stage %s: unreadable model output for %s/%s: %s: %s",
                     stage.id, sample.shard, sample.key, type(e).__name__, e)
        if sample.error is None:
            sample.error = f"model_error:{stage.id}"
        return sample
    sample.features.update(cols)
    if cols.get(R.READ_ERROR) and sample.error is None:
        sample.error = cols[R.READ_ERROR]
    return sample


class ShardResult(NamedTuple):
    kept: ShardKept | None
    errors: list            # FileError dicts
    counts: Counter         # samples_read, kept, reason:<r>, read_error:<e>
    clock: dict             # stage id -> [seconds, samples]


def process_shard(path: str, feature_stages, select_stages, layout: OutputLayout, metadata: dict,
                  resumed: bool = False, models: list[LoadedModel] = (), work: bool = False) -> ShardResult:
    """Read, score and decide one shard; write its scores and decisions files.

    ``select_stages`` None: score only (``beam-filter score``), no decisions file.
    ``work`` (score only): write the rows as `run`'s work rows file instead (float32 embeddings,
    tables.write_work_rows); the select over it writes the scores file (select_part).
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
        window: list[R.Sample] = []
        # With models, samples wait in a window of one batch (their bytes are held that long),
        # then leave as byte-free rows: memory is one batch plus the shard's rows.
        size = max((m.batch_size() for m in models), default=1)

        def flush():
            apply_models(window, models, clock)
            for sample in window:
                row = score_row(sample)
                rows.append(decide_locally(row, select_stages) if decide else row)
            window.clear()

        for item in read_shard(path):
            if isinstance(item, FileError):
                errors.append(item.as_dict())
                continue
            window.append(add_features(item, feature_stages, clock))
            if len(window) >= size:
                flush()
        flush()
    kept = None
    if rows and work and not decide:
        tables.write_work_rows(layout, path, rows, metadata)
    elif rows:
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


def read_part_rows(part, embeddings: tuple = (), keep_batches: list | None = None) -> list[dict]:
    """The rows of one select input part: a scores file, or a DataComp metadata (parquet, npz) pair
    (``keep_batches`` then receives the Arrow batches they were built from)."""
    if isinstance(part, (tuple, list)):
        from beam_filter.datacomp_metadata import iter_metadata_rows

        parquet, npz = part
        return list(iter_metadata_rows(parquet, npz, list(embeddings) if npz else None,
                                       keep_batches=keep_batches))
    return tables.read_rows(part, embeddings_beside(part))       # a scores file of a score run


def select_part(part, select_stages, layout: OutputLayout, metadata: dict,
                embeddings: tuple = (), infos: dict | None = None, with_kept: bool = True) -> ShardResult:
    """The fused select of one input part: a scores file, or a DataComp metadata (parquet, npz) pair.

    Rows are read, decided by partwise stages (selection.is_partwise: per-row rules, fixed
    thresholds, row-wise group stages such as image_based) and rank-staged ones (a top
    fraction whose threshold, computed beforehand from every part's keys, comes in
    ``infos`` by stage id), and written as that part's decisions file, in the worker that
    read them: no row crosses a shuffle, and memory is bounded by the largest part, not
    by the pool. The general graph (transforms/select.py) writes the same bytes (a test
    checks it).

    ``with_kept`` False: the result carries no kept list (``select`` does not reshard); from a
    pool worker that list is pickled to the launcher, 200 MB for a million kept rows.

    A work rows file of `run` (layout.is_work_rows: scored rows with float32 embeddings, written by
    process_shard) also gets its final scores file and fp16 embeddings written here, after the
    decisions, so they carry the verdict columns as the general graph's do.
    """
    result = _select_part(part, select_stages, layout, metadata, embeddings, infos, with_kept)
    return result if with_kept else result._replace(kept=None)


def _select_part(part, select_stages, layout: OutputLayout, metadata: dict, embeddings: tuple,
                 infos: dict | None, with_kept: bool = True) -> ShardResult:
    work = is_work_rows(part) if isinstance(part, str) else False
    fast = None if work else columnar.select_part_columnar(part, select_stages, layout, metadata, embeddings,
                                                           infos, with_kept=with_kept)
    if fast is not None:
        return fast
    batches: list = []
    rows = decide_rows(read_part_rows(part, embeddings, batches), select_stages, infos)
    kept = None
    if rows:
        from beam_filter.datacomp_metadata import passthrough_columns

        kept = write_shard_tables(layout, rows[0][R.SHARD], rows, write_scores=work, write_decisions=True,
                                  metadata=metadata, arrow_columns=passthrough_columns(batches, select_stages))
    counts = Counter({"rows_read": len(rows)})
    for r in rows:
        counts["kept" if r[R.KEPT] else f"reason:{r[R.REASON]}"] += 1
    return ShardResult(kept, [], counts, {})


def part_rank_keys(part, select_stages, rank_index: int, embeddings: tuple = (),
                   infos: dict | None = None):
    """The rank keys of one part for the rank-staged stage ``select_stages[rank_index]``.

    The part's rows go through the stages before it (with ``infos`` for earlier rank
    stages), and the stage's value of each row still alive becomes an order-preserving
    key (``rules.exact_rank.key_batch``): 8 bytes a row leave the worker, which is all
    the exact rank-n search needs (``transforms/thresholds.RankOfKeyBatches``).
    """
    from beam_filter.rules.exact_rank import as_number, key_batch

    fast = columnar.rank_keys_columnar(part, select_stages, rank_index, embeddings, infos)
    if fast is not None:
        return fast
    stage = select_stages[rank_index]
    spec = stage.rank_spec()
    columns = spec.columns or ((spec.value,) if isinstance(spec.value, str) else ())
    if rank_index == 0 and columns:
        values = _first_column_values(part, columns)
        if values is not None:
            return key_batch(values)
    value = spec.value
    get = value if callable(value) else (lambda row: row.get(value))
    rows = advance_rows(read_part_rows(part, embeddings), select_stages[:rank_index], infos)
    values = []
    for row in rows:
        if row[R.REASON] is None:
            values.append(as_number(get(row)))
    return key_batch(values)


def _first_column_values(part, columns: tuple):
    """The rank values of a part whose rows all stay alive up to a recipe's first stage, read as one
    column: the first of ``columns`` the part's file has (as the stage's value getter picks it per
    row), float64 with None as NaN, rows with a read error left out (they are never alive). None when
    no such numeric column exists or the file is unreadable: the caller builds rows and gets the one-line
    error of the stage or of the reader."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from beam_filter import fsio

    path = part[0] if isinstance(part, (tuple, list)) else part
    renames = {}
    if isinstance(part, (tuple, list)):
        from beam_filter.datacomp_metadata import RENAMES

        renames = RENAMES
    with fsio.open_read(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception:  # noqa: BLE001 - unreadable: the row path reports it in one line
            return None
        in_file = {renames.get(n, n): n for n in pf.schema_arrow.names}
        name = next((in_file[c] for c in columns if c in in_file), None)
        if name is None:
            return None
        wanted = [name] + ([in_file[R.READ_ERROR]] if R.READ_ERROR in in_file else [])
        table = pf.read(columns=wanted)
    column = table.column(name)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or column.null_count == len(column)):
        return None
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if R.READ_ERROR in in_file:
        alive = pc.is_null(table.column(in_file[R.READ_ERROR])).to_numpy(zero_copy_only=False)
        values = values[alive]
    return values


def process_shard_path(path: str, feature_stages, select_stages, layout: OutputLayout, metadata: dict,
                       resumed: frozenset = frozenset()) -> ShardResult:
    """process_shard with ``resumed`` given as the set of resumed shards (the pool's call shape)."""
    return process_shard(path, feature_stages, select_stages, layout, metadata, resumed=path in resumed)


# ---- summary-staged stages (fused_rank): per-part summaries and rank keys (transforms/part_ranges.py) ----

SUMMARY_SIDE = "_summary"     # the side input that carries the pool's summary to part_summary_keys


def summary_stage(select_stages, index: int, child: str | None = None):
    """The summary-staged stage at ``select_stages[index]``, or its child of id ``child`` (a combinator's)."""
    stage = select_stages[index]
    if child is None:
        return stage
    return next(c for c in stage.children if c.id == child)


def _alive_at(part, select_stages, index: int, embeddings: tuple, infos: dict | None) -> list[dict]:
    rows = advance_rows(read_part_rows(part, embeddings), select_stages[:index], infos)
    return [r for r in rows if r[R.REASON] is None]


def part_summary(part, select_stages, index: int, child: str | None = None, embeddings: tuple = (),
                 infos: dict | None = None):
    """One part's summary (``SummarySpec.summarize``) of its rows alive when ``select_stages[index]`` is
    reached (with ``infos`` of the stages before it): a few numbers leave the worker, not rows."""
    spec = summary_stage(select_stages, index, child).summary_spec()
    if spec.summarize_array is not None:
        fast = columnar.alive_columnar(part, select_stages, index, embeddings, infos)
        summary = None if fast is None else spec.summarize_array(*fast)
        if summary is not None:
            return summary
    return spec.summarize(_alive_at(part, select_stages, index, embeddings, infos))


def part_summary_keys(part, select_stages, index: int, child: str | None = None, embeddings: tuple = (),
                      infos: dict | None = None):
    """The rank keys (``rules.exact_rank.key_batch``, 8 bytes a row) of ``SummarySpec.value`` under the
    pool's summary (``infos[SUMMARY_SIDE]``) for the same alive rows as :func:`part_summary`."""
    from beam_filter.rules.exact_rank import as_number, key_batch

    infos = dict(infos or {})
    summary = infos.pop(SUMMARY_SIDE)
    spec = summary_stage(select_stages, index, child).summary_spec()
    if spec.value_array is not None:
        fast = columnar.alive_columnar(part, select_stages, index, embeddings, infos)
        values = None if fast is None else spec.value_array(fast[0], summary)
        if values is not None:
            return key_batch(values[fast[1]])
    value = spec.value
    return key_batch([as_number(value(r, summary))
                      for r in _alive_at(part, select_stages, index, embeddings, infos)])
