"""The add-back construct: rows the main filters dropped, chosen again by other stages.

"The Devil is in the Details" (2309.15954) ends its pipeline by *adding* to the
filtered set the images that contain digits, whatever the earlier filters said:
they help counting and digit tasks that the other filters starve. A recipe says
that with an ``add_back:`` section, read after ``stages:``::

    stages: [...]
    add_back:
      - digits: {type: has_digits}        # any per-row stage; its "keep" means "add back"

The section is one :class:`AddBackSection` appended after the recipe's main stages,
so it runs last, over the whole pool: every row the main stages dropped (never one
that could not be read: there is nothing to write for it) is offered to the
section's stages in order; the first whose ``reason`` is None takes it back. Such a
row becomes kept with one copy and ``reason = "added_back:<stage id>"``, while ``stage``
still names the main stage that dropped it; so the decisions, ``uids.npy``, the output
shards and the report all say what was added, by which stage, and what it was saved
from (the funnel counts it dropped there and added back at ``add_back``). Rows the main
stages kept are left alone.

What may be listed: per-row rules (and ``any_of``/``all_of`` of them) and scored
stages with a fixed threshold -- stages that decide a row alone, so the section
runs in every select path (fused or not) with the same bytes. A top fraction
or a grouping stage has no meaning "over the dropped rows" that one could
state without ambiguity, so it is refused when the recipe is read. A stage that
only scores (no threshold) keeps every row and would add everything back: list
score-only stages among ``stages:``, and their threshold here.
"""

from __future__ import annotations

from typing import Any

from beam_filter import records as R
from beam_filter.errors import UserError
from beam_filter.registry import GroupStage, ScoredStage, Stage

SECTION = "add_back"            # the recipe key, and the id of the section stage
REASON_PREFIX = "added_back:"   # decision reason of an added-back row


def is_added_back(reason: Any) -> bool:
    """Whether a decision reason marks a row the add-back section kept."""
    return isinstance(reason, str) and reason.startswith(REASON_PREFIX)


def check_entry(source: str, stage: Stage) -> None:
    """Refuse a stage that cannot choose rows alone (see the module docstring)."""
    leaves = getattr(stage, "children", None) or [stage]
    for leaf in leaves:
        if isinstance(leaf, GroupStage):
            raise UserError(f"{source}: add_back: {leaf.id!r} ({leaf.name}) is a grouping stage; "
                            "add_back takes per-row rules or fixed-threshold scores")
        if isinstance(leaf, ScoredStage) and leaf.needs_global_info():
            raise UserError(f"{source}: add_back: {leaf.id!r} ({leaf.name}) keeps a top fraction; "
                            "give it a fixed threshold in add_back")


def add_back(row: dict, entries, reason_of) -> dict:
    """Apply the section to one row (before ``finish_decision``).

    ``entries``: the section's stages in order; ``reason_of(stage, row)`` their
    reason (``selection.stage_reason``). Only rows dropped by a stage (not by the
    reader) are candidates; the first entry that keeps the row takes it back.
    """
    if row.get(R.READ_ERROR) or row.get(R.REASON) is None:
        return row
    for entry in entries:
        if reason_of(entry, row) is None:
            row[R.REASON] = REASON_PREFIX + entry.id      # R.STAGE keeps the stage that dropped it
            row[R.COPIES] = 1
            return row
    return row


def added_by(reason: str) -> str:
    """The add-back stage id named by an ``added_back:<id>`` reason."""
    return reason[len(REASON_PREFIX):]
