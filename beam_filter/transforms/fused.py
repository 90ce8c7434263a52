"""The fused fast paths: one shard (or select input part) in, its files out, no shuffle.

When every stage of a recipe is local (a pure per-row rule: no model, no
global threshold, no grouping), a shard's whole score+select work can happen
in the worker that reads it. Only a tiny ShardKept summary leaves the worker,
so nothing is shuffled before the reshard plan.

On the local runner shards are spread over a process pool (transforms/local_pool.py).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_filter.shard_work import ShardResult, StageClock, process_shard_path, select_part
from beam_filter.transforms.local_pool import LocalPoolDoFn
from beam_filter.transforms.score import FILE_ERRORS, NAMESPACE, flush_clock


class FusedShardFn(LocalPoolDoFn):
    """Shard path -> ShardKept (main) and file errors (``file_errors``), via process_shard."""

    work = staticmethod(process_shard_path)

    def __init__(self, feature_stages, select_stages, layout, metadata, resumed=frozenset(), processes=0):
        super().__init__((feature_stages, select_stages, layout, metadata, frozenset(resumed)), processes)
        self.preload = tuple(type(s).__module__ for s in [*feature_stages, *(select_stages or ())])

    def emit(self, path, result: ShardResult):
        for name, n in sorted(result.counts.items()):
            if n:
                Metrics.counter(NAMESPACE, name).inc(n)
        clock = StageClock()
        clock.totals = result.clock
        flush_clock(clock)
        for e in result.errors:
            yield beam.pvalue.TaggedOutput(FILE_ERRORS, e)
        if result.kept is not None and self.args[1] is not None:      # decisions were made
            yield result.kept


class FusedSelectFn(LocalPoolDoFn):
    """Input part (scores file or metadata pair) -> its decisions file, via shard_work.select_part."""

    work = staticmethod(select_part)

    def __init__(self, select_stages, layout, metadata, embeddings=(), processes=0):
        super().__init__((select_stages, layout, metadata, tuple(embeddings)), processes)
        self.preload = tuple(type(s).__module__ for s in select_stages)

    def emit(self, part, result: ShardResult):
        for name, n in sorted(result.counts.items()):
            if n:
                Metrics.counter(NAMESPACE, name).inc(n)
        return ()
