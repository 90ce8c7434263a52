"""uid subsets (e.g. a DFN inds file): keep only the listed uids, or drop them.

Whether a uid is listed, and how many times, comes from ``uids.UidSet`` (loaded once per
process by the stage). DataComp's resharder writes a uid listed k times k times (that is how
upsampling is expressed in a subset file); :func:`uid_subset_copies` says so for a kept row.
"""

from __future__ import annotations

MODES = ("keep", "drop")


def uid_subset_reason(listed: bool, mode: str = "keep") -> str | None:
    """``keep``: an unlisted uid is dropped (``not_in_uid_subset``);
    ``drop``: a listed one is (``in_drop_subset``)."""
    if mode == "keep":
        return None if listed else "not_in_uid_subset"
    return "in_drop_subset" if listed else None


def uid_subset_copies(count: int, mode: str = "keep", honour_counts: bool = True) -> int | None:
    """Copies of a kept row whose uid is listed ``count`` times: ``count`` in ``keep`` mode
    (DataComp's resharder), None (no opinion: one copy) in ``drop`` mode or when counts are not honoured."""
    if mode != "keep" or not honour_counts or count <= 1:
        return None
    return int(count)
