"""Reshard planning and writing (pure), DataComp-resharder compatible.

Plan: source shards sorted by path, each with its kept samples expanded by
their copy counts (``{uid}-{j}`` keys when a sample is written more than once);
a prefix sum over the per-source counts cuts the expanded sequence into output
shards of ``shard_size``. Each output shard therefore covers a contiguous run
of source shards, and its writer re-reads only those, streaming, picking the
wanted members: no image ever goes through a shuffle.

Member bytes are copied unchanged (only the member *names* change for copies);
headers are fixed (tar_io), so outputs are byte-identical across runs.

Decisions name samples by (shard, key); before a sample is written, the uid
its members carry is checked against the uid its decision row recorded, so
decisions made from another pool whose shard and key names happen to match
stop the job (:class:`DecisionMismatch`) instead of writing samples that were
never kept.
"""

from __future__ import annotations

import json
import tarfile
from typing import NamedTuple

from beam_filter import fsio, layout
from beam_filter.errors import UserError
from beam_filter.tar_io import ShardError, iter_tar_groups, tar_bytes_member


class Segment(NamedTuple):
    shard: str
    start: int     # offsets in the source shard's expanded kept sequence
    end: int


class OutputShard(NamedTuple):
    index: int
    segments: tuple


class DecisionMismatch(UserError):
    """A source sample is not the one its decision row describes (another pool's decisions)."""


def expand_kept(kept, uid_keys: bool = False) -> list[tuple[str, str, str]]:
    """(key, uid, copies) in key order -> [(source key, output key, uid)], copies expanded.

    ``uid_keys``: every sample is named ``{uid}-{j}``, j from 0, even with one copy (DataComp's
    resharder, which trainers and tools keyed on it expect); else a single copy keeps its key."""
    out = []
    for key, uid, copies, *caption in kept:      # caption: output_captions.py, carried along
        if uid_keys:
            out.extend((key, f"{uid}-{j}", uid, *caption) for j in range(max(copies, 1)))
        elif copies <= 1:
            out.append((key, key, uid, *caption))
        else:
            out.extend((key, f"{uid}-{j}", uid, *caption) for j in range(copies))
    return out


def plan_output_shards(counts: list[tuple[str, int]], shard_size: int) -> list[OutputShard]:
    """Cut the concatenation of sources (sorted by path) into output shards of ``shard_size``."""
    if shard_size <= 0:
        raise ValueError("shard_size must be positive")
    plan: list[OutputShard] = []
    current: list[Segment] = []
    room = shard_size
    for shard, n in sorted(counts):
        pos = 0
        while pos < n:
            take = min(room, n - pos)
            current.append(Segment(shard, pos, pos + take))
            pos += take
            room -= take
            if room == 0:
                plan.append(OutputShard(len(plan), tuple(current)))
                current, room = [], shard_size
    if current:
        plan.append(OutputShard(len(plan), tuple(current)))
    return plan


def write_output_shard(path: str, parts: list[tuple[str, list[tuple]]], blur=None) -> dict:
    """Write one output tar from ``[(source shard, [(source key, output key[, uid])])]``, in that order.

    Returns its stats. A source member that has vanished since scoring is counted
    in ``missing`` (and reported), never silently dropped. When an entry carries
    the uid of its decision row, a source sample with another uid raises
    :class:`DecisionMismatch` (nothing is written: the temporary tar is removed).
    """
    from beam_filter.reading import build_sample

    written = missing = renamed = blurred = 0
    sources = []
    used: set[str] = set()      # sample names in this output tar
    with fsio.AtomicWriter(path) as f:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for shard, entries in parts:
                out_keys: dict[str, list[str]] = {}
                expected: dict[str, str] = {}
                captions: dict[str, str] = {}       # chosen captions (output_captions.py)
                for src_key, out_key, *uid in entries:
                    out_keys.setdefault(src_key, []).append(out_key)
                    if uid:
                        expected[src_key] = uid[0]
                    if len(uid) > 1 and uid[1] is not None:
                        captions[src_key] = uid[1]
                try:
                    with fsio.open_read(shard) as src:
                        # Streamed in the source's own order: one sample in memory at a time.
                        for key, members in iter_tar_groups(src, wanted=set(out_keys)):
                            if key in expected and key in out_keys:
                                found = build_sample(shard, key, members).uid    # the reader's own uid rule
                                if found != expected[key]:
                                    raise DecisionMismatch(
                                        f"{shard}: sample {key!r} has uid {found}, its decision row says "
                                        f"{expected[key]}; the decisions were made from another pool "
                                        "(reshard needs the decisions of these very shards)")
                            if key in captions:
                                from beam_filter.output_captions import rewrite_members

                                members = rewrite_members(members, captions[key])
                            if blur is not None:        # --apply-blur (output_blur.py): re-encoded
                                faces = blur.members(shard, key, members)
                                blurred += faces is not members
                                members = faces
                            for out_key in out_keys.pop(key, ()):
                                name = unique_name(out_key, used)
                                renamed += name != out_key
                                for ext in sorted(members):
                                    tar_bytes_member(tar, f"{name}.{ext}", members[ext])
                                written += 1
                except ShardError:
                    pass  # samples after the damage were never decided kept; the rest are counted below
                missing += sum(len(v) for v in out_keys.values())
                sources.append(shard)
    stats = {"count": written, "successes": written, "missing": missing, "sources": sources}
    if renamed:
        stats["renamed"] = renamed
    if blur is not None:
        stats["blurred"] = blurred
    return stats


def unique_name(name: str, used: set[str]) -> str:
    """``name``, or ``name#1``, ``name#2`` ... when two source shards bring the same key into
    one output tar (a reader would otherwise merge or overwrite them); the tar reader
    renames keys repeated inside one shard the same way."""
    out, n = name, 0
    while out in used:
        n += 1
        out = f"{name}#{n}"
    used.add(out)
    return out


def write_planned_shard(element: tuple, directory: str, blur=None) -> dict:
    """Write output shard ``index`` into ``directory`` (an output's ``shards/``, see
    layout.OutputLayout.shards_dir) from its planned parts (source shards in path order), with stats."""
    index, parts = element
    tar_name = layout.shard_tar_name(index)
    stats = write_output_shard(fsio.join(directory, tar_name), sorted(parts), blur)
    stats["shard"] = tar_name
    write_stats(fsio.join(directory, layout.shard_stats_name(index)), stats)
    return stats


def write_stats(path: str, stats: dict) -> None:
    fsio.write_bytes_atomic(path, json.dumps(stats, indent=2, sort_keys=True).encode())
