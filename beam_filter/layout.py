"""Where every file of a run lives under ``--output``: one place that names them all.

::

    scores/<stem>.parquet      embeddings/<stem>.npz      decisions/<stem>.parquet
    file_errors/<stem>.json    thresholds/<stage id>.json
    verdicts/<stage id>@<stem>.parquet   (a group stage's verdicts, by part; removed when the job ends)
    work_rows/<stem>.parquet, <stem>.npz (`run`'s scored rows, float32 embeddings; removed when the job ends)
    uids.npy   report.json   report.html   report_<plot>.png
    shards/{:08d}.tar   shards/{:08d}_stats.json   shards/meta.json
    .beam_filter_output (marker)   .beam_filter.lock

``<stem>`` is the source shard's file name without ``.tar`` (or ``.parquet`` for
DataComp metadata parts), see :func:`shard_stem`. The writers (tables,
resharding, finalize, report) ask :class:`OutputLayout` for paths, and
``output_dir`` derives from :data:`OUTPUT_FILES` which names it may delete, so
a new output file is added here once. Pure string work, no Beam import.
"""

from __future__ import annotations

import os

from beam_filter import fsio

SCORES, EMBEDDINGS, DECISIONS = "scores", "embeddings", "decisions"
THRESHOLDS, FILE_ERRORS, SHARDS = "thresholds", "file_errors", "shards"
VERDICTS = "verdicts"                     # work area of the by-part select (verdict_files.py)
WORK_ROWS = "work_rows"                   # work area of `run`: scored rows before the select (pipeline.py)
UIDS = "uids.npy"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
REPORT_PNGS = "report_*.png"
SHARDS_META = "meta.json"                 # in shards/
MARKER = ".beam_filter_output"            # output_dir.py: who owns the directory
LOCK = ".beam_filter.lock"                # output_dir.py: one run at a time
PARQUET, NPZ, JSON = "*.parquet", "*.npz", "*.json"
SHARD_TARS, SHARD_STATS = "*.tar", "*_stats.json"

# Every file a run writes, as {directory: name patterns}; "" is the top level. (The marker
# and the lock are output_dir's own, and every directory may also hold .tmp-* files.)
OUTPUT_FILES: dict[str, tuple[str, ...]] = {
    "": (UIDS, REPORT_JSON, REPORT_HTML, REPORT_PNGS),
    SCORES: (PARQUET,), EMBEDDINGS: (NPZ,), DECISIONS: (PARQUET,),
    THRESHOLDS: (JSON,), FILE_ERRORS: (JSON,), VERDICTS: (PARQUET,), WORK_ROWS: (PARQUET, NPZ),
    SHARDS: (SHARD_TARS, SHARD_STATS, SHARDS_META),
}
# What --resume keeps (the expensive part); everything derived from scores is recomputed.
RESUME_KEEPS = (SCORES, EMBEDDINGS)


def shard_stem(shard: str) -> str:
    """``gs://b/pool/00001234.tar`` (or ``.parquet``) -> ``00001234``: the name of every per-shard output.

    A shard of a named source (``.../00001234.tar#cc12m``, sources.py) -> ``cc12m.00001234``."""
    if "#" in shard:
        from beam_filter.sources import split_tag

        path, source = split_tag(shard)
        if source:
            return f"{source}.{shard_stem(path)}"
    base = os.path.basename(shard.rstrip("/"))
    for suffix in (".tar", ".parquet"):      # source tars; DataComp metadata parts
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def embeddings_beside(scores_file: str) -> str:
    """``<output>/scores/<stem>.parquet`` -> ``<output>/embeddings/<stem>.npz``: where a score
    run put the embeddings of that file (select --scores reads both)."""
    if is_work_rows(scores_file):           # a work rows file of `run`: its npz lies beside it
        return scores_file[: -len(".parquet")] + ".npz"
    root = os.path.dirname(os.path.dirname(scores_file))     # "/"-separated for gs:// too (POSIX)
    return OutputLayout(root).embeddings(scores_file)


def is_work_rows(path: str) -> bool:
    """Whether ``path`` is a work rows file (``<output>/work_rows/<stem>.parquet``, see
    :meth:`OutputLayout.work_rows`): the scored rows of a `run` waiting for its select."""
    return os.path.basename(os.path.dirname(str(path).rstrip("/"))) == WORK_ROWS


def shard_name(index: int) -> str:
    """Output shard ``index`` -> ``00000012`` (DataComp resharder layout)."""
    return f"{index:08d}"


def shard_tar_name(index: int) -> str:
    return f"{shard_name(index)}.tar"


def shard_stats_name(index: int) -> str:
    return f"{shard_name(index)}_stats.json"


def threshold_name(stage_id: str) -> str:
    return f"{stage_id}.json"


def verdicts_name(stage_id: str, shard: str) -> str:
    """``<stage id>@<stem>.parquet``: one group stage's verdicts for the rows of one part (flat, so
    output_dir's ownership check knows every file; the id is %-quoted, so the name splits at '@')."""
    from urllib.parse import quote

    return f"{quote(stage_id, safe='')}@{shard_stem(shard)}.parquet"


def verdicts_path(directory: str, stage_id: str, shard: str) -> str:
    """The verdicts file of ``stage_id`` for ``shard``'s rows in ``directory`` (``verdicts_dir``)."""
    return fsio.join(directory, verdicts_name(stage_id, shard))


def report_png_name(plot: str) -> str:
    """``plot`` must already be safe for a file name (report.data.safe_name)."""
    return f"report_{plot}.png"


class OutputLayout:
    """The path of every file of a run under ``output`` (local or gs://)."""

    def __init__(self, output: str):
        self.output = output

    def __repr__(self) -> str:
        return f"OutputLayout({self.output!r})"

    def _path(self, *parts: str) -> str:
        return fsio.join(self.output, *parts)

    # ---- directories
    @property
    def scores_dir(self) -> str:
        return self._path(SCORES)

    @property
    def embeddings_dir(self) -> str:
        return self._path(EMBEDDINGS)

    @property
    def decisions_dir(self) -> str:
        return self._path(DECISIONS)

    @property
    def thresholds_dir(self) -> str:
        return self._path(THRESHOLDS)

    @property
    def file_errors_dir(self) -> str:
        return self._path(FILE_ERRORS)

    @property
    def shards_dir(self) -> str:
        return self._path(SHARDS)

    @property
    def verdicts_dir(self) -> str:
        return self._path(VERDICTS)

    @property
    def work_rows_dir(self) -> str:
        return self._path(WORK_ROWS)

    # ---- per source shard
    def scores(self, shard: str) -> str:
        return self._path(SCORES, shard_stem(shard) + ".parquet")

    def embeddings(self, shard: str) -> str:
        return self._path(EMBEDDINGS, shard_stem(shard) + ".npz")

    def decisions(self, shard: str) -> str:
        return self._path(DECISIONS, shard_stem(shard) + ".parquet")

    def work_rows(self, shard: str) -> str:
        """The scored rows of ``shard`` as `run` holds them before a select that needs them whole
        (float32 embeddings in :meth:`work_embeddings`, no verdict columns yet); pipeline.py."""
        return self._path(WORK_ROWS, shard_stem(shard) + ".parquet")

    def work_embeddings(self, shard: str) -> str:
        return self._path(WORK_ROWS, shard_stem(shard) + ".npz")

    def file_error(self, shard: str) -> str:
        return self._path(FILE_ERRORS, shard_stem(shard) + ".json")

    # ---- per stage
    def threshold(self, stage_id: str) -> str:
        return self._path(THRESHOLDS, threshold_name(stage_id))

    # ---- top level
    @property
    def uids(self) -> str:
        return self._path(UIDS)

    @property
    def report_json(self) -> str:
        return self._path(REPORT_JSON)

    @property
    def report_html(self) -> str:
        return self._path(REPORT_HTML)

    def report_png(self, plot: str) -> str:
        return self._path(report_png_name(plot))

    @property
    def marker(self) -> str:
        return self._path(MARKER)

    @property
    def lock(self) -> str:
        return self._path(LOCK)

    # ---- output shards
    def shard_tar(self, index: int) -> str:
        return self._path(SHARDS, shard_tar_name(index))

    def shard_stats(self, index: int) -> str:
        return self._path(SHARDS, shard_stats_name(index))

    @property
    def shards_meta(self) -> str:
        return self._path(SHARDS, SHARDS_META)

    # ---- listings (sorted paths; temporary files never listed)
    def decision_files(self) -> list[str]:
        return fsio.list_files(self.decisions_dir, PARQUET)

    def score_files(self) -> list[str]:
        return fsio.list_files(self.scores_dir, PARQUET)

    def threshold_files(self) -> list[str]:
        return fsio.list_files(self.thresholds_dir, JSON)

    def file_error_files(self) -> list[str]:
        return fsio.list_files(self.file_errors_dir, JSON)

    def verdict_files(self) -> list[str]:
        return fsio.list_files(self.verdicts_dir, PARQUET)

    def work_rows_files(self) -> list[str]:
        """Every work file (parquet and npz) of ``work_rows/``."""
        return sorted(fsio.list_files(self.work_rows_dir, PARQUET) + fsio.list_files(self.work_rows_dir, NPZ))

    def shard_stats_files(self) -> list[str]:
        return fsio.list_files(self.shards_dir, SHARD_STATS)

    def report_png_files(self) -> list[str]:
        return fsio.list_files(self.output, REPORT_PNGS)
