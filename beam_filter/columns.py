"""The column contract: what each stage reads and adds, checked against the input before any work.

A recipe is wrong, not merely slow, when a stage reads a column nothing
provides: SemDeDup on a misspelt embedding column, or near-dedup on scores
that were computed without pHashes, would silently drop nothing. Every stage
therefore declares its columns (registry.py): ``needs()`` for what its select
phase reads, ``produced_columns()`` for what its score phase adds and
``verdict_columns()`` for what its verdicts add. :func:`check_recipe` walks the
recipe in order and fails with one line naming the stage, the column and the
fix, in well under a second, before Beam starts.

What is available depends on the input:

* shards: the columns every read sample has (:data:`SAMPLE_COLUMNS`) plus what the
  stages up to and including this one compute in the score phase;
* a scores directory: exactly the columns stored there (parquet schema and the
  embedding arrays beside it), since select computes nothing from bytes;
* DataComp metadata: the columns of its parquet (renamed as the reader renames
  them) and the arrays of its npz.
"""

from __future__ import annotations

import difflib
from typing import Iterable, NamedTuple

from beam_filter import records as R
from beam_filter.errors import UserError

# Columns every sample read from a shard has (reading.build_sample, records.new_row).
SAMPLE_COLUMNS = frozenset({
    R.UID, R.SHARD, R.KEY, R.URL, R.CAPTION, R.READ_ERROR, R.WARNING, R.CAPTION_CHARS,
    R.CAPTION_WORDS, R.WIDTH, R.HEIGHT, R.IMAGE_FORMAT, R.IMAGE_BYTES, R.SHA256})

SHARDS, SCORES, METADATA = "shards", "scores", "metadata"


class Need(NamedTuple):
    """A column a stage reads: any one of ``columns`` will do (e.g. its own score, or
    DataComp's metadata column for the same model). ``what`` says what for."""

    columns: tuple[str, ...]
    what: str = ""


def need(*columns: str, what: str = "") -> Need:
    return Need(tuple(c for c in columns if c), what)


class Available(NamedTuple):
    """The columns an input provides, and how to name that input in a message."""

    kind: str                  # SHARDS | SCORES | METADATA
    columns: frozenset
    where: str = ""


def check_recipe(stages: Iterable, available: Available) -> None:
    """Raise a one-line UserError for the first stage whose needed column nothing provides."""
    have = set(available.columns)
    for stage in stages:
        leaves = list(getattr(stage, "children", None) or [stage])
        if available.kind == SHARDS:
            for leaf in leaves:
                have.update(leaf.produced_columns())
        for leaf in leaves:
            for n in leaf.needs():
                if not any(c in have for c in n.columns):
                    raise UserError(_message(leaf, n, have, available))
        for leaf in leaves:
            have.update(leaf.verdict_columns())


def _message(stage, n: Need, have: set, available: Available) -> str:
    wanted = " or ".join(repr(c) for c in n.columns)
    what = f" ({n.what})" if n.what else ""
    close = difflib.get_close_matches(n.columns[0], sorted(have), n=1, cutoff=0.75)
    if close:
        fix = f"did you mean {close[0]!r}?"
    elif available.kind == SHARDS:
        fix = "add a stage that computes it before this one"
    elif available.kind == SCORES:
        fix = ("the scores were computed by a recipe without it: score the shards with a recipe that "
               "has the stage computing it (`beam-filter score`), or use `beam-filter run`")
    else:
        arrays = sorted(c for c in have if c.endswith(("_img", "_txt")))
        fix = (f"DataComp metadata has no such column (its embeddings: {', '.join(arrays) or 'none'}); "
               "set the stage's parameter to one it has, or score the shards (`beam-filter run`)")
    source = {SHARDS: "the shards and no earlier stage provide",
              SCORES: f"the scores in {available.where} do not have",
              METADATA: f"the DataComp metadata in {available.where} does not have"}[available.kind]
    return f"stage {stage.id!r} ({stage.name}) needs column {wanted}{what}, which {source}; {fix}"


# ---- what an input provides ------------------------------------------------------------

_SAMPLED_FILES = 64     # score files whose schemas are read (columns are the same in every file
                        # of one run, except embeddings absent where no row had one)


def shard_columns() -> Available:
    return Available(SHARDS, SAMPLE_COLUMNS, "the shards")


def scores_columns(score_files: list[str], where: str) -> Available:
    """Columns stored by a `score`/`run`: parquet schemas and the embedding arrays beside them."""
    from beam_filter.layout import embeddings_beside

    cols: set[str] = set()
    for path in score_files[:_SAMPLED_FILES]:
        cols.update(_parquet_names(path))
        cols.update(_npz_names(embeddings_beside(path)))
    return Available(SCORES, frozenset(cols), where)


def metadata_columns(pairs: list[tuple[str, str | None]], where: str) -> Available:
    """Columns of DataComp metadata rows as ``datacomp_metadata`` reads them (first part)."""
    from beam_filter.datacomp_metadata import RENAMES

    parquet, npz = pairs[0]
    cols = {RENAMES.get(c, c) for c in _parquet_names(parquet)}
    cols |= {R.SHARD, R.KEY, R.CAPTION_CHARS, R.CAPTION_WORDS, R.READ_ERROR, R.WARNING}
    if npz:
        cols |= _npz_names(npz)
    return Available(METADATA, frozenset(cols), where)


def _parquet_names(path: str) -> list[str]:
    import pyarrow.parquet as pq

    from beam_filter import fsio

    try:
        with fsio.open_read(path) as f:       # the footer only, not the data
            return list(pq.read_schema(f).names)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def _npz_names(path: str) -> set[str]:
    import zipfile

    from beam_filter import fsio

    if not fsio.exists(path):
        return set()
    try:
        with fsio.open_read(path) as f, zipfile.ZipFile(f) as z:   # the central directory only
            return {n[: -len(".npy")] for n in z.namelist() if n.endswith(".npy")} - {"uids"}
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None


# ---- were the stored scores computed with this recipe's settings? ------------------------

def check_score_settings(stages, scores_root: str) -> None:
    """Refuse scores computed by a stage of the same id with other score settings.

    Columns are named after stage ids (``clip_score``), so a recipe asking for
    ViT-L-14 would otherwise read the ViT-B-32 scores of a ``clip`` stage without a
    word. The scoring recipe is in the scores directory's report.json; each stage
    that computes something must have been computed with the same
    ``score_config`` (thresholds are not part of it: changing them is what
    select is for). A directory without report.json is checked by columns only.
    """
    from beam_filter import fsio
    from beam_filter.layout import OutputLayout

    path = OutputLayout(scores_root).report_json
    if not fsio.exists(path):
        return
    try:
        stored = _stored_stages(fsio.read_json(path).get("recipe", {}).get("stages", []))
    except (ValueError, AttributeError, TypeError):
        return
    for stage in stages:
        for leaf in getattr(stage, "children", None) or [stage]:
            want = leaf.score_config()
            if want is None or leaf.id not in stored:
                continue
            kind, params = stored[leaf.id]
            had = _score_config_of(leaf.id, kind, params)
            if kind != leaf.name or (had is not None and had != want):
                diff = ", ".join(f"{k}={had.get(k)!r} (this recipe: {want.get(k)!r})"
                                 for k in sorted(set(want) | set(had or {}))
                                 if (had or {}).get(k) != want.get(k)) if kind == leaf.name else f"type {kind}"
                raise UserError(f"stage {leaf.id!r} ({leaf.name}): the scores in {scores_root} were computed "
                                f"with {diff}; score the shards with this recipe (`beam-filter score --resume` "
                                "rescores only what changed) or use the settings the scores were made with")


def _stored_stages(summary: list) -> dict:
    """{stage id: (type, params)} of a report.json recipe summary, combinators opened."""
    out = {}
    for s in summary:
        out[s["id"]] = (s["type"], s.get("params") or {})
        for child in (s.get("params") or {}).get("stages", []) if s["type"] in ("any_of", "all_of", "add_back") else []:
            for cid, cfg in child.items():
                cfg = dict(cfg)
                out[cid] = (cfg.pop("type", cid), cfg)
    return out


def _score_config_of(stage_id: str, kind: str, params: dict) -> dict | None:
    from beam_filter.registry import build_stage

    try:
        return build_stage(stage_id, kind, params).score_config()
    except (UserError, TypeError, ValueError):
        return None      # a stage this version cannot rebuild: its columns are still checked
