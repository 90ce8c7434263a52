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

from beam_filter.shard_work import (ShardResult, StageClock, part_rank_keys, process_shard_path,
                                    select_part)
from beam_filter.transforms.local_pool import LocalPoolDoFn
from beam_filter.transforms.score import FILE_ERRORS, NAMESPACE, flush_clock


def _emit_shard_result(result: ShardResult, decided: bool):
    for name, n in sorted(result.counts.items()):
        if n:
            Metrics.counter(NAMESPACE, name).inc(n)
    clock = StageClock()
    clock.totals = result.clock
    flush_clock(clock)
    for e in result.errors:
        yield beam.pvalue.TaggedOutput(FILE_ERRORS, e)
    if result.kept is not None and decided:
        yield result.kept


class FusedShardFn(LocalPoolDoFn):
    """Shard path -> ShardKept (main) and file errors (``file_errors``), via process_shard."""

    work = staticmethod(process_shard_path)

    def __init__(self, feature_stages, select_stages, layout, metadata, resumed=frozenset(), processes=0):
        super().__init__((feature_stages, select_stages, layout, metadata, frozenset(resumed)), processes,
                         stages=[*feature_stages, *(select_stages or ())])

    def emit(self, path, result: ShardResult):
        return _emit_shard_result(result, self.args[1] is not None)


class FusedModelShardFn(beam.DoFn):
    """Shard path -> ShardKept and file errors, with the recipe's models run in this worker
    (process_shard with loaded models): samples leave their bytes after one batch, so memory
    is a batch of bytes plus one shard's rows. The local runner's path for model recipes;
    models load once per DoFn instance, at the first shard that needs them. ``work``: write
    each shard's rows as `run`'s work rows file (float32 embeddings) for a select that writes
    the scores files itself (pipeline._score_models_by_shard)."""

    def __init__(self, feature_stages, select_stages, model_stages, layout, metadata, resumed=frozenset(),
                 work=False):
        self.args = (feature_stages, select_stages, layout, metadata)
        self.model_stages = list(model_stages)
        self.resumed = frozenset(resumed)
        self.work = work

    def setup(self):
        self.models = None

    def process(self, path):
        from beam_filter.shard_work import load_models, process_shard

        resumed = path in self.resumed
        if self.models is None and not resumed:
            self.models = load_models(self.model_stages)
        result = process_shard(path, *self.args, resumed=resumed, models=self.models or (), work=self.work)
        yield from _emit_shard_result(result, self.args[1] is not None)


class FusedSelectFn(LocalPoolDoFn):
    """Input part (scores file or metadata pair) -> its decisions file, via shard_work.select_part.

    Side inputs, by stage id: the thresholds of the recipe's rank-staged stages (PartRankKeysFn)."""

    work = staticmethod(select_part)

    def __init__(self, select_stages, layout, metadata, embeddings=(), processes=0, emit_kept=False):
        super().__init__((select_stages, layout, metadata, tuple(embeddings)), processes, stages=select_stages)
        self.emit_kept = emit_kept          # `run`: the kept lists go on to the reshard

    def work_args(self, side_inputs):
        return (*self.args, dict(side_inputs), self.emit_kept)

    def emit(self, part, result: ShardResult):
        for name, n in sorted(result.counts.items()):
            if n:
                Metrics.counter(NAMESPACE, name).inc(n)
        if self.emit_kept and result.kept is not None:
            yield result.kept


class PartRankKeysFn(LocalPoolDoFn):
    """Input part -> the rank keys of its rows alive at rank-staged stage ``rank_index``
    (shard_work.part_rank_keys); side inputs: thresholds of earlier rank-staged stages."""

    work = staticmethod(part_rank_keys)
    side_inputs_arg = True
    hands_on = True             # 8 bytes a row back: its workers are light, the select reuses them

    def __init__(self, select_stages, rank_index, embeddings=(), processes=0):
        super().__init__((select_stages, rank_index, tuple(embeddings)), processes, stages=select_stages)
