"""Exact duplicates: byte-identical images (same sha256), the smallest uid survives.

``transforms/cluster.ExactDuplicates`` groups row tokens by sha256 and calls
:func:`duplicate_verdicts` on each group.
"""

from __future__ import annotations

from typing import Iterable

from beam_filter.identity import token_uid
from beam_filter.records import Verdict

REASON_PREFIX = "exact_duplicate_of:"


def duplicate_verdicts(sha256: str, tokens: Iterable[str]) -> list[tuple[str, Verdict]]:
    """Verdicts for one group of identical images: every row but the one with the smallest uid
    is dropped. ``tokens`` are row tokens (identity.py; a bare uid works too), so two samples
    that share a uid are still told apart and one of them is dropped."""
    distinct = sorted(set(tokens))
    survivor = token_uid(distinct[0])
    return [(t, Verdict(reason=f"{REASON_PREFIX}{survivor}")) for t in distinct[1:]]
