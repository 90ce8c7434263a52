"""Deterministic choices by hash of uid: which rows train k-means, which rows a resample keeps.

Every random-looking decision in the cluster stages goes through these two
functions, so the same pool and recipe give the same outputs on any runner, in
any bundle order, on any number of workers: a row's fate depends only on its
uid and a salt, never on where it sits in a file or a PCollection. The k-means
training sample is the rows with the smallest ``uid_hash64(uid, "kmeans<seed>")``
(``kmeans.sample_by_uid``; the ``BottomK`` combiner in ``transforms/cluster.py``).
"""

from __future__ import annotations

import hashlib

_U64 = float(1 << 64)


def uid_hash64(uid: str, salt: str | int = "") -> int:
    """A 64-bit unsigned hash of ``salt/uid`` (blake2b; stable across Python versions)."""
    h = hashlib.blake2b(f"{salt}/{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def uid_unit(uid: str, salt: str | int = "") -> float:
    """The uid's hash mapped to [0, 1): the seeded coin of a row."""
    return uid_hash64(uid, salt) / _U64
