"""The ``caption_frequency`` stage: drop captions the pool itself repeats more than K times.

Adapts ``cluster/caption_freq.py`` (normalisation, counting rule) through
``transforms/cluster.CaptionCounts`` (a distributed count). Every row with a caption
gets ``{id}_count``, the number of rows alive when the stage is reached that share its
normalised caption, in its decision row; rows whose count is above ``max_count`` are
dropped as ``frequent_caption``. List it first to count over the whole pool.
"""

from __future__ import annotations

from beam_filter.columns import need
from beam_filter.records import CAPTION
from beam_filter.registry import GroupStage, Param, register


@register
class CaptionFrequency(GroupStage):
    """Pool-frequency caption filter ("The Devil is in the Details").

    Selected by part, its transform sees slim rows: uid, shard, key and the caption (docs/memory.md)."""

    name = "caption_frequency"
    description = "count normalised captions over the pool; drop those seen more than max_count times"
    params = {
        "max_count": Param(int, None, "drop a row whose normalised caption occurs MORE than this many "
                           "times among the rows counted; null: only count",
                           check=lambda v: v is None or v >= 1, check_msg="must be >= 1"),
    }

    def needs(self):
        return (need(CAPTION),)

    def verdict_columns(self) -> tuple[str, ...]:
        return (f"{self.id}_count",)

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import CaptionCounts

        return alive_rows | f"CaptionCounts[{self.id}]" >> CaptionCounts(
            CAPTION, self.p.max_count, f"{self.id}_count")
