"""Decision bookkeeping on rows: the first reason wins, every row ends kept or dropped.

Pure functions over row dicts, used by the Beam select transforms and by the
plain-loop benchmark alike. A stage is *local* when its reason needs nothing
but the row (no global threshold, no groups): a run of local stages can be
applied inside the reader, with no shuffle at all.
"""

from __future__ import annotations

from typing import Any

from beam_filter import records as R
from beam_filter.addback import add_back, is_added_back
from beam_filter.recipe import AddBackSection, Combinator
from beam_filter.registry import GroupStage, RuleStage, ScoredStage, Stage
from beam_filter.sources import is_unfiltered

READ_STAGE = "read"
FAILED_STAGES = "failed_stages"   # every per-row stage the row fails, for the report's overlap matrix


def is_local(stage: Stage) -> bool:
    """Per-row rules (and combinations of them) need nothing but the row."""
    if isinstance(stage, Combinator):
        return all(is_local(c) for c in stage.children)
    return isinstance(stage, RuleStage)


def is_partwise(stage: Stage) -> bool:
    """Whether select can decide with this stage inside one input part (no shuffle, no global value):
    per-row rules, scored stages with a fixed threshold, row-wise group stages (registry.py)."""
    if isinstance(stage, Combinator):
        return all(is_partwise(c) for c in stage.children)
    if isinstance(stage, ScoredStage):
        return not stage.needs_global_info()
    if isinstance(stage, GroupStage):
        return stage.row_wise
    return isinstance(stage, RuleStage)


def is_rank_staged(stage: Stage) -> bool:
    """A scored stage whose only global value is a rank-n threshold it declares (``rank_spec``):
    select computes it from per-part keys of the alive rows, then decides each part alone."""
    return isinstance(stage, ScoredStage) and stage.needs_global_info() and stage.rank_spec() is not None


def is_summary_staged(stage: Stage) -> bool:
    """A scored stage whose global value starts from a small summary of the alive rows that combines
    over parts (``summary_spec``: fused_rank's per-column min/max, then its rank-n threshold): select
    computes it from per-part summaries and rank keys, then decides each part alone. An ``any_of`` /
    ``all_of`` of such stages and partwise ones is too (hype_dfn): its children's values are
    computed over the rows alive at the combinator, and it takes them as one dict by child id."""
    if isinstance(stage, Combinator):
        return (not isinstance(stage, AddBackSection) and any(summary_targets(stage))
                and all(is_partwise(c) or c in summary_targets(stage) for c in stage.children))
    return (isinstance(stage, ScoredStage) and stage.needs_global_info() and stage.rank_spec() is None
            and stage.summary_spec() is not None)


def summary_targets(stage: Stage) -> list[Stage]:
    """The stages whose summary-staged value select computes for ``stage``: itself, or a combinator's
    direct children that are (see :func:`is_summary_staged`)."""
    if isinstance(stage, Combinator):
        return [c for c in stage.children if not isinstance(c, Combinator) and is_summary_staged(c)]
    return [stage] if is_summary_staged(stage) else []


def is_part_grouped(stage: Stage) -> bool:
    """A group stage whose verdicts need many rows (dedup, clustering): the by-part select runs it
    on slim rows of every part and routes its verdicts back to the parts through files
    (verdict_files.py, transforms/group_parts.py)."""
    return isinstance(stage, GroupStage) and not stage.row_wise


def can_select_by_parts(stages: list[Stage]) -> bool:
    """Whether the fused select (per input part, rows never shuffled) can run this recipe:
    every top-level stage is partwise, rank-staged, summary-staged (fused_rank) or a group stage
    (a combinator only of partwise stages). A scored stage with another global value keeps the
    general graph."""
    return all(is_partwise(s) or is_rank_staged(s) or is_summary_staged(s) or is_part_grouped(s)
               for s in stages)


def decide_rows(rows: list[dict], stages: list[Stage], infos: dict | None = None) -> list[dict]:
    """Full decisions for rows of one part under partwise or rank-staged stages.

    The same bookkeeping as the general graph (transforms/select.py): per-row stages
    through :func:`apply_stage` (a rank-staged one with its threshold from ``infos``,
    keyed by stage id), row-wise group stages' verdicts for the rows alive when they
    are reached through :func:`apply_verdict`, so the bytes written match. Another group
    stage's verdicts were computed over every part beforehand and written as files:
    ``infos[stage id]`` is their directory (verdict_files.verdicts_for).
    """
    return finish_rows(advance_rows(rows, stages, infos))


def advance_rows(rows: list[dict], stages: list[Stage], infos: dict | None = None) -> list[dict]:
    """Start decisions and apply ``stages`` in order (see :func:`decide_rows`); not finished, so
    a caller can look at the rows still alive before a later stage (the rank keys pass)."""
    from beam_filter.identity import row_token

    infos = infos or {}
    for row in rows:
        start_decision(row)
    for stage in stages:
        if is_part_grouped(stage):
            from beam_filter.verdict_files import verdicts_for

            directory = infos.get(stage.id)
            if directory is None:
                raise ValueError(f"stage {stage.id!r}: its verdict files were not computed before this pass")
            verdicts = verdicts_for(directory, stage.id, rows)
            for row in rows:
                apply_verdict(stage.id, row, verdicts.get(row_token(row)))
        elif isinstance(stage, GroupStage):
            alive = [r for r in rows if r[R.REASON] is None]
            size = max(1, int(getattr(stage.p, "batch_size", 1024) or 1024))
            verdicts = {}
            for i in range(0, len(alive), size):
                verdicts.update(stage.batch_verdicts(alive[i:i + size]))
            for row in rows:
                apply_verdict(stage.id, row, verdicts.get(row_token(row)))
        else:
            info = infos.get(stage.id)
            for row in rows:
                apply_stage(stage, row, info)
    return rows


def finish_rows(rows: list[dict]) -> list[dict]:
    return [finish_decision(r) for r in rows]


def start_decision(row: dict) -> dict:
    err = row.get(R.READ_ERROR)
    row[R.REASON] = err
    row[R.STAGE] = READ_STAGE if err else None
    row[R.COPIES] = None
    row[FAILED_STAGES] = [READ_STAGE] if err else []
    return row


def stage_reason(stage: Stage, row: dict, info: Any = None) -> str | None:
    """Why ``stage`` drops ``row`` (combinators combine their children's answers)."""
    if isinstance(stage, Combinator):
        infos = info or {}
        return stage.combine([c.reason(row, infos.get(c.id)) for c in stage.children])
    return stage.reason(row, info)


def apply_stage(stage: Stage, row: dict, info: Any = None) -> dict:
    """Apply a per-row stage. Rows dropped earlier are still *evaluated* (for overlaps)
    when the stage is local, but keep their first reason. The add-back section (addback.py)
    may keep a dropped row again."""
    if row.get(R.READ_ERROR):
        return row
    if isinstance(stage, AddBackSection):
        infos = info or {}
        return add_back(row, stage.children, lambda s, r: stage_reason(s, r, infos.get(s.id)))
    alive = row[R.REASON] is None
    if not alive and not is_local(stage):
        return row        # global thresholds are defined on the alive population only
    reason = stage_reason(stage, row, info)
    if reason is not None:
        row[FAILED_STAGES] = row[FAILED_STAGES] + [stage.id]
        if alive:
            row[R.REASON] = reason
            row[R.STAGE] = stage.id
    if alive and isinstance(stage, RuleStage) and (reason is None or is_unfiltered(reason)):
        n = stage.copies(row)           # e.g. a uid listed k times in a subset file
        if n is not None:
            row[R.COPIES] = (1 if row[R.COPIES] is None else int(row[R.COPIES])) * int(n)
    return row


def apply_verdict(stage_id: str, row: dict, verdict: R.Verdict | None) -> dict:
    if verdict is None or row[R.REASON] is not None:
        return row
    if verdict.columns:
        row.update(verdict.columns)
    if verdict.reason is not None:
        row[R.REASON] = verdict.reason
        row[R.STAGE] = stage_id
        row[FAILED_STAGES] = row[FAILED_STAGES] + [stage_id]
    elif verdict.copies is not None:
        if int(verdict.copies) <= 0:      # resampled away (cluster balance / importance)
            row[R.REASON] = f"{stage_id}_not_sampled"
            row[R.STAGE] = stage_id
        else:
            row[R.COPIES] = int(verdict.copies)
    return row


def finish_decision(row: dict) -> dict:
    # kept: no reason, added back (addback.py), or of a source kept past the filters (sources.py)
    kept = row[R.REASON] is None or is_added_back(row[R.REASON]) or is_unfiltered(row[R.REASON])
    row[R.KEPT] = kept
    copies = row[R.COPIES]
    row[R.COPIES] = (1 if copies is None else int(copies)) if kept else 0
    return row


def decide_locally(row: dict, stages: list[Stage]) -> dict:
    """Full decision for a recipe whose stages are all local (the fused fast path)."""
    start_decision(row)
    for stage in stages:
        apply_stage(stage, row)
    return finish_decision(row)
