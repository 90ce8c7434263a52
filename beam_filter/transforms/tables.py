"""PTransforms that write and read the per-shard tables (scores, decisions).

Rows are gathered per source shard with a list-combiner (CombinePerKey), which
Beam lifts into a partial combine before the shuffle: cheaper than a plain
GroupByKey on Dataflow and on the local runner. Each shard's file is written
whole by one worker, atomically, with rows sorted by key, so a retried bundle
rewrites identical bytes.
"""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_filter import fsio
from beam_filter import records as R
from beam_filter import tables
from beam_filter.layout import OutputLayout, embeddings_beside
from beam_filter.tables import write_shard_tables
from beam_filter.transforms.score import NAMESPACE


class _WriteFn(beam.DoFn):
    def __init__(self, layout, write_scores, write_decisions, metadata, skip_scores):
        self.layout, self.write_scores, self.write_decisions = layout, write_scores, write_decisions
        self.metadata, self.skip_scores = metadata, frozenset(skip_scores)

    def process(self, element):
        shard, rows = element
        if self.write_decisions:     # one counter update per name and shard, not per row
            counts = Counter("kept" if r.get(R.KEPT) else f"reason:{r.get(R.REASON)}" for r in rows)
            for name, n in sorted(counts.items()):
                Metrics.counter(NAMESPACE, name).inc(n)
        write_scores = self.write_scores and shard not in self.skip_scores
        yield write_shard_tables(self.layout, shard, list(rows), write_scores=write_scores,
                                 write_decisions=self.write_decisions, metadata=self.metadata)


class WriteShardTables(beam.PTransform):
    """rows -> one parquet per source shard (scores and/or decisions) -> ShardKept per shard."""

    def __init__(self, layout: OutputLayout, *, write_scores: bool, write_decisions: bool,
                 metadata: dict | None = None, skip_scores=()):
        """``skip_scores``: shards whose scores file is already valid (resumed), not rewritten."""
        super().__init__()
        self.args = (layout, write_scores, write_decisions, metadata or {}, skip_scores)

    def expand(self, rows):
        return (rows
                | "ByShard" >> beam.Map(lambda r: (r[R.SHARD], r))
                | "GatherShard" >> beam.CombinePerKey(beam.combiners.ToListCombineFn())
                | "WriteShardFiles" >> beam.ParDo(_WriteFn(*self.args)))


class WriteFileErrors(beam.PTransform):
    """File-level errors -> ``file_errors/<stem>.json`` (collected into report.json at the end)."""

    def __init__(self, layout: OutputLayout):
        super().__init__()
        self.layout = layout

    def expand(self, errors):
        import json

        def write(err):
            fsio.write_bytes_atomic(self.layout.file_error(err["shard"]),
                                    json.dumps(err, sort_keys=True).encode())
            return err
        return errors | "WriteFileError" >> beam.Map(write)


class ReadScoreRows(beam.PTransform):
    """scores/*.parquet (+ embeddings) -> rows, for ``select --scores``."""

    def __init__(self, score_files: list[str]):
        super().__init__()
        self.files = sorted(score_files)

    def expand(self, pbegin):
        def read(path):     # path: <output>/scores/<stem>.parquet; its embeddings are in the same output
            return tables.read_rows(path, embeddings_beside(path))
        return (pbegin
                | "ListScoreFiles" >> beam.Create(self.files)
                | "SpreadScoreFiles" >> beam.Reshuffle()
                | "ReadScoreFiles" >> beam.FlatMap(read))
