"""Builds and runs the Beam graph of each command from a recipe and pipeline options.

    run      shards -> score -> select -> decisions, uids.npy -> reshard -> shards/
    score    shards -> scores/ (+ embeddings/)          (resumable, per shard)
    select   scores/ or DataComp metadata -> decisions/, uids.npy
    reshard  decisions/ + source shards -> shards/

Every command ends with :func:`beam_filter.finalize.finalize`, which writes
uids.npy, report.json, meta.json and report.html from the files the graph
wrote, so a retried or resumed job always reports what is really on disk.
"""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions, StandardOptions

from beam_filter import fsio, tables
from beam_filter.dataflow import is_local_runner
from beam_filter.errors import UserError
from beam_filter.job import Job
from beam_filter.output_blur import face_blur
from beam_filter.blur_metadata import inject_hook
from beam_filter.registry import GroupStage
from beam_filter.selection import can_select_by_parts, is_local
from beam_filter.transforms.fused import FusedShardFn
from beam_filter.transforms.local_pool import local_pool_size
from beam_filter.transforms.reshard import WriteShards
from beam_filter.shard_work import score_row
from beam_filter.layout import OutputLayout, shard_stem
from beam_filter.tables import ShardKept
from beam_filter.transforms.score import FILE_ERRORS, ReadWebDataset, RunModelStages
from beam_filter.transforms.select import ApplyStages
from beam_filter.transforms.tables import ReadScoreRows, WriteFileErrors, WriteShardTables



# ---- options and runner -------------------------------------------------------

def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Pipeline options with local defaults.

    The local runner runs the portable FnApiRunner directly rather than the
    DirectRunner's Prism-first path, which would try to download a binary.
    It runs in-memory: its multi-process mode costs ~8 s of worker start-up
    per run, so the fused path parallelises shards with its own process pool
    instead (see transforms/fused.py). ``--direct_running_mode=multi_processing``
    still works for users who want it.
    """
    options = PipelineOptions(list(beam_args))
    std = options.view_as(StandardOptions)
    if is_local_runner(std.runner):
        direct = options.view_as(DirectOptions)
        if not any(a.startswith("--direct_running_mode") for a in beam_args):
            direct.direct_running_mode = "in_memory"
        options.view_as(SetupOptions).save_main_session = False
        if direct.direct_running_mode == "in_memory":
            # --direct_num_workers=N sizes beam_filter's own pool (local_processes). Beam would also
            # split each step into N bundles, each DoFn instance starting a pool of N: N² workers.
            explicit = options.get_all_options(drop_default=True).get("direct_num_workers")
            if explicit:
                options.view_as(LocalPoolOptions).beam_filter_processes = int(explicit)
            direct.direct_num_workers = 1
    return options


class LocalPoolOptions(PipelineOptions):
    """The local pool's size as ``--direct_num_workers`` asked for it (pipeline_options)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--beam_filter_processes", type=int, default=None,   # None: not in a Dataflow job's options
                            help="local runner: processes of beam_filter's pool (default: --direct_num_workers, "
                                 "else one per core)")


def local_processes(options: PipelineOptions) -> int:
    """Size of the fused path's process pool: all cores on the in-memory local runner, else 0."""
    if not is_local_runner(options.view_as(StandardOptions).runner):
        return 0
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode != "in_memory":
        return 0
    return local_pool_size(options.view_as(LocalPoolOptions).beam_filter_processes)


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    if is_local_runner(options.view_as(StandardOptions).runner):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


# ---- graph ---------------------------------------------------------------------

def build(p: beam.Pipeline, job: Job):
    """Add the job's transforms to ``p``."""
    layout = OutputLayout(job.output)
    recipe = job.recipe
    kept = None
    if job.command in ("run", "score"):
        kept = _score(p, job, layout)
    elif job.command == "select":
        if job.fuse and can_select_by_parts(recipe.stages):
            job.execution = "by_part"
            _select_fused(p, job, layout)
        else:
            job.execution = "graph"
            rows = _select_input(p, job)
            decided = rows | "Select" >> ApplyStages(recipe.stages, info_dir=_info_dir(job))
            kept = decided | "WriteDecisions" >> WriteShardTables(
                layout, write_scores=False, write_decisions=True, metadata=_metadata(recipe))
    elif job.command == "reshard":
        job.execution = "by_shard"
        check_reshard_inputs(job)
        kept = (p | "ListDecisions" >> beam.Create(sorted(job.decision_files))
                | "ReadKept" >> beam.Map(read_kept, _shard_paths_by_stem(job.shards)))
    if job.command in ("run", "reshard"):
        kept | "Reshard" >> WriteShards(layout, job.shard_size, processes=local_processes(p.options),
                                        uid_keys=job.uid_keys,     # --inject-blur-metadata, --apply-blur
                                        blur=inject_hook(job, face_blur(job)))


def _score(p, job: Job, layout: OutputLayout):
    recipe = job.recipe
    leaf = recipe.leaf_stages()
    feature_stages = [s for s in leaf if s.feature_columns()]
    meta = _metadata(recipe)
    resumed = _already_scored(job, layout) if job.resume else set()
    # Fused per shard, no shuffle: `score` of any recipe without a model (features only), and
    # `run` of a recipe made only of per-row rules (score and decide where the bytes are).
    scoring_only = job.command == "score"
    decide_here = scoring_only or all(is_local(s) for s in recipe.stages)
    # `run` of a recipe without a model whose select runs by parts (group stages such as
    # caption_frequency or exact_dedup): score by shard, then select by part over the scores files.
    then_by_parts = (not decide_here and can_select_by_parts(recipe.stages)
                     and all(_run_by_parts_fits(s) for s in recipe.stages))
    if job.fuse and not recipe.model_stages() and (decide_here or then_by_parts):
        job.execution = "by_shard"
        out = (p | "ListShards" >> beam.Create(job.shards)
               | "SpreadShards" >> beam.Reshuffle()
               | "ScoreAndDecide" >> beam.ParDo(FusedShardFn(
                   feature_stages, None if scoring_only or then_by_parts else recipe.stages, layout, meta,
                   resumed, processes=local_processes(p.options) if len(job.shards) > 1 else 0)).with_outputs(
                       FILE_ERRORS, main="kept"))
        out[FILE_ERRORS] | "FileErrors" >> WriteFileErrors(layout)
        if then_by_parts:
            job.execution = "by_shard, then by_part"
            return _select_by_parts(p, job, layout, [layout.scores(s) for s in job.shards], [],
                                    after=out["kept"], emit_kept=True)
        return None if scoring_only else out["kept"]
    if job.fuse and recipe.model_stages() and local_processes(p.options) > 0:
        kept = _score_models_by_shard(p, job, layout, feature_stages, meta, resumed)
        if job.execution:
            return kept
    job.execution = "graph"
    todo = [s for s in job.shards if s not in resumed]
    read = p | "Read" >> ReadWebDataset(todo, feature_stages)
    read[FILE_ERRORS] | "FileErrors" >> WriteFileErrors(layout)
    samples = read["samples"] | "Models" >> RunModelStages(recipe.model_stages(), job.gpu_hints)
    rows = samples | "ToRow" >> beam.Map(score_row)
    if resumed:
        old = p | "ReadScored" >> ReadScoreRows([layout.scores(s) for s in sorted(resumed)])
        rows = (rows, old) | "AllRows" >> beam.Flatten()
    if job.command == "score":
        rows | "WriteScores" >> WriteShardTables(layout, write_scores=True, write_decisions=False,
                                                 metadata=meta, skip_scores=resumed)
        return None
    decided = rows | "Select" >> ApplyStages(recipe.stages, info_dir=_info_dir(job))
    return decided | "WriteTables" >> WriteShardTables(layout, write_scores=True, write_decisions=True,
                                                       metadata=meta, skip_scores=resumed)


def _score_models_by_shard(p, job: Job, layout: OutputLayout, feature_stages, meta, resumed):
    """The local runner's path for model recipes: each shard read, scored by the models (loaded
    once, in this process) and written as its scores file where it is read, so memory is one
    batch of image bytes plus one shard's rows instead of the whole pool (RunInference on the
    in-memory runner materialises every sample with its bytes). `run` then decides in the
    same worker when the recipe is all per-row rules, or by parts over the scores files just
    written when it is rank-staged or has group stages (selection.can_select_by_parts).
    When a group stage does not fit the scores files (:func:`_run_by_parts_fits`: it clusters the
    float32 embeddings, or adds verdict columns that the general graph's scores files carry), the
    shards' rows go to work files instead (layout.work_rows: float32 embeddings, no verdict
    columns yet) and the by-part select writes the scores files with the decisions
    (shard_work.select_part), the bytes of the general graph; shards resumed from valid scores
    files are read from those, as the general graph reads them. Otherwise returns with
    ``job.execution`` unset and the general graph runs. Dataflow keeps RunInference."""
    from beam_filter.transforms.fused import FusedModelShardFn

    recipe = job.recipe
    scoring_only = job.command == "score"
    decide_here = not scoring_only and all(is_local(s) for s in recipe.stages)
    by_parts = not scoring_only and not decide_here and can_select_by_parts(recipe.stages)
    if not (scoring_only or decide_here or by_parts):
        return None
    work = by_parts and _run_needs_work_rows(recipe)
    out = (p | "ListShards" >> beam.Create(job.shards)
           | "SpreadShards" >> beam.Reshuffle()
           | "ScoreShards" >> beam.ParDo(FusedModelShardFn(
               feature_stages, recipe.stages if decide_here else None, recipe.model_stages(), layout, meta,
               resumed, work=work)).with_outputs(FILE_ERRORS, main="kept"))
    out[FILE_ERRORS] | "FileErrors" >> WriteFileErrors(layout)
    if not by_parts:
        job.execution = "by_shard"
        return None if scoring_only else out["kept"]
    job.execution = "by_shard, then by_part"
    parts = [layout.work_rows(s) if work and s not in resumed else layout.scores(s) for s in job.shards]
    return _select_by_parts(p, job, layout, parts, [], after=out["kept"], emit_kept=True)


def _run_needs_work_rows(recipe) -> bool:
    """Whether `run` scores a model recipe by shard into work rows files rather than its scores
    files: some group stage does not fit a select over the scores files (:func:`_run_by_parts_fits`)."""
    return not all(_run_by_parts_fits(s) for s in recipe.stages)


def _run_by_parts_fits(stage) -> bool:
    """Whether `run` may select ``stage`` by parts over the scores files it just wrote and still write
    the general graph's bytes: not for a group stage that reads an embedding (:func:`_reads_embedding`)
    nor for one that adds verdict columns (the general graph writes the scores after the select, so
    its scores files carry them, e.g. ``caption_frequency_count``)."""
    if not isinstance(stage, GroupStage):
        return True
    return not stage.verdict_columns() and not _reads_embedding(stage)


def _reads_embedding(stage) -> bool:
    """Whether a group stage reads its ``embedding`` column (clustering stages; near_dedup with
    min_similarity): its rows must then carry the model's float32 embeddings, not the fp16
    copies a scores file stores, for `run` to decide what the general graph decides."""
    if not isinstance(stage, GroupStage):
        return False
    column = getattr(stage.p, "embedding", None)
    return column is not None and any(column in n.columns for n in stage.needs())


def _select_fused(p, job: Job, layout: OutputLayout) -> None:
    """select by input part (selection.can_select_by_parts): each part is read, decided and
    written by one worker (a local process pool on the local runner); rows never cross a
    shuffle, memory is one part.

    A rank-staged stage (a top fraction, ``rank_spec``) costs one more read of the parts:
    each part sends the 8-byte rank keys of its rows alive at that stage, the exact
    rank-n search (``RankOfKeyBatches``) turns them into the threshold, and the threshold
    reaches the later reads as a side input. Stages are applied in recipe order, so a
    rank stage after another sees that one's threshold. A group stage (dedup, clustering)
    costs one more read too: its slim rows (identity + the columns it needs) go to its own
    transform, and its verdicts come back to the later reads as one file per part
    (transforms/group_parts.py); the side input is only their directory."""
    if job.metadata_dir:
        from beam_filter.datacomp_metadata import embedding_keys_for, list_metadata_files

        parts = list_metadata_files(job.metadata_dir)
        wanted = embedding_keys_for(job.recipe.leaf_stages())
    else:
        parts, wanted = sorted(job.score_files), []
    _select_by_parts(p, job, layout, parts, wanted)


def _select_by_parts(p, job: Job, layout: OutputLayout, parts: list, wanted: list, after=None,
                     emit_kept: bool = False):
    """The by-part select graph (see _select_fused). ``after``: a PCollection that must be complete
    before any part is read (the scoring step that writes the parts); parts missing then (a shard
    with no sample has no scores file) are skipped. ``emit_kept``: return the ShardKept lists."""
    from apache_beam.pvalue import AsList, AsSingleton

    from beam_filter.selection import is_part_grouped, is_rank_staged, is_summary_staged, summary_targets
    from beam_filter.transforms.fused import FusedSelectFn, PartRankKeysFn
    from beam_filter.transforms.group_parts import GroupAtParts
    from beam_filter.transforms.part_ranges import SummaryAtParts
    from beam_filter.transforms.select import save_info
    from beam_filter.transforms.thresholds import RankOfKeyBatches

    stages = job.recipe.stages
    processes = local_processes(p.options) if len(parts) > 1 else 0
    listed = p | "ListParts" >> beam.Create(parts)
    if after is not None:
        listed = (listed
                  | "AfterScoring" >> beam.Map(lambda part, _: part, AsList(after))
                  | "ScoredParts" >> beam.Filter(fsio.exists))
    spread = listed | "SpreadParts" >> beam.Reshuffle()
    infos = {}
    for i, stage in enumerate(stages):
        if is_part_grouped(stage):
            # dedup / clustering on slim rows; the verdicts go back to the parts as files
            infos[stage.id] = spread | f"Group[{stage.id}]" >> GroupAtParts(
                stages, i, layout, wanted, infos, processes=processes)
            continue
        if is_summary_staged(stage):
            # fused_rank: per-part min/max, combined, then its rank keys (transforms/part_ranges.py)
            found = {}
            for target in summary_targets(stage):
                child = None if target is stage else target.id
                found[target.id] = spread | f"Summary[{target.id}]" >> SummaryAtParts(
                    stages, i, child, wanted, infos, processes=processes)
                found[target.id] | f"SaveInfo[{target.id}]" >> beam.Map(save_info, _info_dir(job), target.id)
            if stage.id in found:
                infos[stage.id] = found[stage.id]
            else:           # a combinator takes its children's values as one dict by child id
                infos[stage.id] = (p | f"Infos[{stage.id}]" >> beam.Create([None])
                                   | f"ByChild[{stage.id}]" >> beam.Map(
                                       lambda _, **kw: kw, **{k: AsSingleton(v) for k, v in found.items()}))
            continue
        if not is_rank_staged(stage):
            continue
        spec = stage.rank_spec()
        info = (spread
                | f"RankKeys[{stage.id}]" >> beam.ParDo(
                    PartRankKeysFn(stages, i, wanted, processes=processes),
                    **{k: AsSingleton(v) for k, v in infos.items()})
                | f"{stage.id}/RankThreshold" >> RankOfKeyBatches(spec.fraction, spec.label))
        info | f"SaveInfo[{stage.id}]" >> beam.Map(save_info, _info_dir(job), stage.id)
        infos[stage.id] = info
    return (spread
            | "SelectParts" >> beam.ParDo(FusedSelectFn(stages, layout, _metadata(job.recipe), wanted,
                                                        processes=processes, emit_kept=emit_kept),
                                          **{k: AsSingleton(v) for k, v in infos.items()}))


def _select_input(p, job: Job):
    if job.metadata_dir:
        from beam_filter.datacomp_metadata import embedding_keys_for
        from beam_filter.transforms.metadata import ReadDataCompMetadata

        # Only the npz arrays some stage reads (each is ~2-3 KB per row as float32).
        wanted = embedding_keys_for(job.recipe.leaf_stages())
        return p | "ReadMetadata" >> ReadDataCompMetadata(job.metadata_dir, embeddings=wanted)
    return p | "ReadScores" >> ReadScoreRows(job.score_files)


def _metadata(recipe) -> dict:
    return {tables.META_RECIPE_HASH: recipe.hash.encode(),
            tables.META_SCORE_HASH: recipe.score_hash().encode()}


def _info_dir(job: Job) -> str:
    return OutputLayout(job.output).thresholds_dir


def _already_scored(job: Job, layout: OutputLayout) -> set[str]:
    """Shards whose scores file exists and was computed with this recipe's score settings."""
    want = job.recipe.score_hash().encode()
    done = set()
    for shard in job.shards:
        path = layout.scores(shard)
        if fsio.exists(path):
            try:
                if tables.file_metadata(path).get(tables.META_SCORE_HASH) == want:
                    done.add(shard)
            except Exception:  # a damaged scores file is simply scored again
                pass
    return done


def read_kept(decision_file: str, shard_paths: dict[str, str]) -> ShardKept:
    """A decisions parquet -> the kept list of its source shard among ``shard_paths`` (for ``reshard``).

    Only shards given as input are ever read: decisions of any other shard are
    refused by :func:`check_reshard_inputs` before the pipeline starts.
    """
    from beam_filter import records as R

    from beam_filter.output_captions import OUTPUT_CAPTION

    columns = [R.SHARD, R.KEY, R.UID, R.KEPT, R.COPIES]
    if OUTPUT_CAPTION in tables.parquet_metadata(decision_file).schema.names:
        columns.append(OUTPUT_CAPTION)          # a chosen caption travels to the writer
    rows = tables.read_rows(decision_file, columns=columns)
    rows.sort(key=lambda r: r[R.KEY])
    stem = shard_stem(decision_file)
    if stem not in shard_paths:
        raise UserError(f"{decision_file}: its source shard {stem}.tar is not among --input")
    return ShardKept(shard_paths[stem], tuple(tables.kept_entry({**r, R.COPIES: int(r[R.COPIES])})
                                              for r in rows if r[R.KEPT]))


def check_reshard_inputs(job: Job) -> None:
    """Refuse decisions whose source shard is not an --input shard (before Beam starts).

    Decisions are matched to sources by shard name; that they describe these very
    samples is checked per sample, by uid, when the writer reads them
    (resharding.write_output_shard).
    """
    stems = _shard_paths_by_stem(job.shards)
    orphans = [f for f in job.decision_files if shard_stem(f) not in stems]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise UserError(f"--decisions: {orphans[0]} has no source shard "
                        f"{shard_stem(orphans[0])}.tar among --input{more}")


def _shard_paths_by_stem(shards: list[str]) -> dict[str, str]:
    return {shard_stem(s): s for s in shards}


# ---- running -------------------------------------------------------------------

def run_job(job: Job, beam_args: list[str], progress: bool = True) -> dict:
    """Build, run and finalize ``job``; returns the report dict."""
    from beam_filter.finalize import finalize, warm_report_imports

    options = pipeline_options(beam_args)
    t0 = time.time()
    p = make_pipeline(options)
    build(p, job)
    monitor = _progress_monitor(job) if progress else None
    if monitor is not None:
        monitor.__enter__()
    try:
        warm_report_imports(job.output)
        result = p.run()
        result.wait_until_finish()
    finally:
        if monitor is not None:
            monitor.__exit__(None, None, None)
        from beam_filter.transforms.local_pool import stop_handed_pools

        stop_handed_pools()         # a light pass's pool no later step took over
    if job.execution and "by_part" in job.execution:
        from beam_filter.output_dir import remove_work_files

        remove_work_files(job.output)       # group stages' verdict files (transforms/group_parts.py)
    elapsed = time.time() - t0
    return finalize(job, result, elapsed, options)


def _progress_monitor(job: Job):
    """Shards (or metadata parts, scores files) done / total, rate and ETA on stderr while a local
    run works; quiet when stderr is not a terminal."""
    from beam_filter.progress import ParquetDirCounter, ProgressMonitor

    layout = OutputLayout(job.output)
    if job.command in ("run", "score") and job.shards:
        # A run that scores by shard and then selects by part writes its decisions at the very end:
        # its progress is the scoring, one scores file per shard.
        scored_first = job.command == "score" or job.execution == "by_shard, then by_part"
        directory = layout.scores_dir if scored_first else layout.decisions_dir
        if scored_first and job.command == "run" and job.recipe.model_stages() and _run_needs_work_rows(job.recipe):
            directory = layout.work_rows_dir        # _score_models_by_shard's work rows files
        return ProgressMonitor(len(job.shards), ParquetDirCounter(directory), label=job.command)
    if job.command == "select":
        if job.metadata_dir:
            from beam_filter.datacomp_metadata import list_metadata_files

            total, unit = len(list_metadata_files(job.metadata_dir)), "parts"
        else:
            total, unit = len(job.score_files), "files"
        return ProgressMonitor(total, ParquetDirCounter(layout.decisions_dir), label="select", unit=unit,
                               row_unit="rows")
    return None
