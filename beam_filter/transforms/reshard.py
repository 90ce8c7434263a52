"""WriteShards: kept samples -> ``shards/{:08d}.tar`` (+ ``_stats.json``) by re-reading source shards.

File names come from :mod:`beam_filter.layout` (``shard_tar_name``/``shard_stats_name``);
the directory is the output's ``OutputLayout.shards_dir``.

Only (key, uid, copies) tuples are shuffled; image bytes are read again from the
source tars by the writer of each output shard (design rule 1, ARCHITECTURE.md).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_filter.layout import OutputLayout
from beam_filter.resharding import expand_kept, plan_output_shards, write_planned_shard
from beam_filter.transforms.local_pool import LocalPoolDoFn


def _plan_by_source(counts, shard_size):
    """{source shard: [(output index, start, end)]}: each source looks up only its own segments."""
    by_source = {}
    for out in plan_output_shards(counts, shard_size):
        for seg in out.segments:
            by_source.setdefault(seg.shard, []).append((out.index, seg.start, seg.end))
    return by_source


def _segments_for(shard_kept, plan, uid_keys=False):
    """Emit (output index, (source shard, [(src key, out key)])) for each planned segment of this source."""
    expanded = expand_kept(shard_kept.kept, uid_keys)
    for index, start, end in plan.get(shard_kept.shard, ()):
        yield index, (shard_kept.shard, expanded[start:end])


class _WriteOutputShardFn(LocalPoolDoFn):
    """(output index, parts) -> written tar + stats; on the local runner, spread over a process pool."""

    work = staticmethod(write_planned_shard)

    def __init__(self, directory: str, processes: int = 0, blur=None):
        super().__init__((directory, blur), processes)


class WriteShards(beam.PTransform):
    """PCollection[ShardKept] -> output tars (+ stats); yields each output shard's stats.

    ``directory``: where the shards go, an ``OutputLayout`` (its ``shards_dir``) or that path.
    """

    def __init__(self, directory, shard_size: int, processes: int = 0, uid_keys: bool = False,
                 blur=None):
        """``uid_keys``: name every output sample ``{uid}-{j}`` (DataComp's resharder)."""
        super().__init__()
        self.directory = directory.shards_dir if isinstance(directory, OutputLayout) else directory
        self.shard_size = shard_size
        self.processes = processes
        self.uid_keys = uid_keys
        self.blur = blur        # output_blur.FaceBlur for --apply-blur, else None

    def expand(self, shard_kept):
        size = self.shard_size
        counts = (shard_kept
                  | "KeptCount" >> beam.Map(lambda s: (s.shard, sum(max(c, 1) for _, _, c, *_ in s.kept)))
                  | "AllCounts" >> beam.combiners.ToList())
        plan = counts | "Plan" >> beam.Map(_plan_by_source, size)
        return (shard_kept
                | "Segments" >> beam.FlatMap(_segments_for, plan=AsSingleton(plan), uid_keys=self.uid_keys)
                | "ByOutputShard" >> beam.GroupByKey()
                | "WriteOutputShard" >> beam.ParDo(_WriteOutputShardFn(self.directory, self.processes, self.blur)))
