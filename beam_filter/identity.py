"""Which sample a row is: its source shard and key, never its uid alone.

A uid is what DataComp's subset files speak in, but pools are not always
clean: two samples can carry the same uid (a re-crawl, a copied shard) with
different images. If group verdicts (dedup, clustering) were joined back by
uid, a verdict meant for one of them would land on both. So every grouping
stage keys its verdicts by a *row token* naming the sample itself:

    "<uid>\\t<source shard>\\t<key>"

Keys are unique within a shard (``tar_io.iter_tar_groups`` renames a repeated
key ``key#1``), so the token is unique in a pool. The uid comes first and the
tab sorts below every hex digit, so tokens sort exactly as their uids do
whenever uids differ: rules that order or break ties by uid (SemDeDup order,
near-duplicate survivor, exact-dedup survivor) give the same answers as with
bare uids, and equal uids are ordered by where the sample lives.
Hash-based choices (k-means samples, resampling coins) keep hashing the uid.
"""

from __future__ import annotations

from beam_filter.records import KEY, SHARD, UID

SEP = "\t"


def row_token(row: dict) -> str:
    """The token of a row: the key that its verdicts are joined back on."""
    return f"{row[UID]}{SEP}{row.get(SHARD)}{SEP}{row.get(KEY)}"


def token_uid(token: str) -> str:
    """The uid part of a token (a bare uid is returned as is)."""
    return token.split(SEP, 1)[0]
