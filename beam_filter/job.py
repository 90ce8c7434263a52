"""The resolved description of one command: what the CLI validated and the pipeline builds from.

A plain dataclass in a module of its own, without Beam, so that the CLI can
build a job and check its recipe's columns (``check_columns``) in well under a
second, before ``import apache_beam`` (about 1.2 s) is paid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from beam_filter.recipe import Recipe


@dataclass
class Job:
    """Everything a command needs, resolved and validated by the CLI."""

    command: str                         # run | score | select | reshard
    output: str
    recipe: Recipe | None = None
    shards: list[str] = field(default_factory=list)       # matched source tars, sorted
    input_globs: list[str] = field(default_factory=list)
    score_files: list[str] = field(default_factory=list)  # select --scores
    metadata_dir: str | None = None                       # select --metadata
    decision_files: list[str] = field(default_factory=list)  # reshard
    shard_size: int = 10000
    resume: bool = False
    gpu_hints: dict = field(default_factory=dict)         # resource hints for inference steps
    fuse: bool = True        # allow the shuffle-free path when every stage is a per-row rule
    skipped_inputs: list[str] = field(default_factory=list)  # non-.tar files the --input globs matched
    # How the graph runs, set by pipeline.build and stated in report.json (memory follows from it):
    # "by_shard" / "by_part" (fused: one shard or input part per worker, no row shuffled) or "graph".
    execution: str = ""
    uid_keys: bool = False   # reshard: name every output sample {uid}-{j} (DataComp's resharder)
    sources: dict | None = None   # named inputs (sources.Mix.describe()): report.json and meta.json
    inject_blur_metadata: bool = False   # reshard: face boxes into each json (blur_metadata.py)
    blur_metadata: str | None = None     # ... looked up by uid in this DataComp metadata dir
    apply_blur: bool = False  # reshard: blur face boxes in output images (output_blur.py)


def check_columns(job: Job) -> None:
    """Every column each stage reads must come from the input or an earlier stage (columns.py).

    Runs before any Beam work, so a misspelt column or scores made without a needed
    feature stop a 12-hour job in its first second instead of giving a wrong dataset.
    """
    from beam_filter import columns

    if job.recipe is None:
        return
    if job.command in ("run", "score"):
        available = columns.shard_columns()
    elif job.metadata_dir:
        from beam_filter.datacomp_metadata import list_metadata_files

        available = columns.metadata_columns(list_metadata_files(job.metadata_dir), job.metadata_dir)
    else:
        root = job.input_globs[0] if job.input_globs else ""
        available = columns.scores_columns(job.score_files, root)
        columns.check_score_settings(job.recipe.stages, root)
    columns.check_recipe(job.recipe.stages, available)
