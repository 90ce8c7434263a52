"""uid subsets (e.g. a DFN inds file): keep only the listed uids, or drop them.

Whether a uid is listed comes from ``uids.UidSet`` (loaded once per process by the stage).
"""

from __future__ import annotations

MODES = ("keep", "drop")


def uid_subset_reason(listed: bool, mode: str = "keep") -> str | None:
    """``keep``: an unlisted uid is dropped (``not_in_uid_subset``);
    ``drop``: a listed one is (``in_drop_subset``)."""
    if mode == "keep":
        return None if listed else "not_in_uid_subset"
    return "in_drop_subset" if listed else None
