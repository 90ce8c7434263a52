"""Decision bookkeeping on rows: the first reason wins, every row ends kept or dropped.

Pure functions over row dicts, used by the Beam select transforms and by the
plain-loop benchmark alike. A stage is *local* when its reason needs nothing
but the row (no global threshold, no groups): a run of local stages can be
applied inside the reader, with no shuffle at all.
"""

from __future__ import annotations

from typing import Any

from beam_filter import records as R
from beam_filter.recipe import Combinator
from beam_filter.registry import GroupStage, RuleStage, ScoredStage, Stage

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


def decide_rows(rows: list[dict], stages: list[Stage]) -> list[dict]:
    """Full decisions for rows of one part under partwise stages (``is_partwise``).

    The same bookkeeping as the general graph (transforms/select.py): per-row stages
    through :func:`apply_stage`, row-wise group stages' verdicts for the rows alive
    when they are reached through :func:`apply_verdict`, so the bytes written match.
    """
    from beam_filter.identity import row_token

    for row in rows:
        start_decision(row)
    for stage in stages:
        if isinstance(stage, GroupStage):
            alive = [r for r in rows if r[R.REASON] is None]
            size = max(1, int(getattr(stage.p, "batch_size", 1024) or 1024))
            verdicts = {}
            for i in range(0, len(alive), size):
                verdicts.update(stage.batch_verdicts(alive[i:i + size]))
            for row in rows:
                apply_verdict(stage.id, row, verdicts.get(row_token(row)))
        else:
            for row in rows:
                apply_stage(stage, row)
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
    when the stage is local, but keep their first reason."""
    if row.get(R.READ_ERROR):
        return row
    alive = row[R.REASON] is None
    if not alive and not is_local(stage):
        return row        # global thresholds are defined on the alive population only
    reason = stage_reason(stage, row, info)
    if reason is not None:
        row[FAILED_STAGES] = row[FAILED_STAGES] + [stage.id]
        if alive:
            row[R.REASON] = reason
            row[R.STAGE] = stage.id
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
    kept = row[R.REASON] is None
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
