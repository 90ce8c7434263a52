"""Summary-staged stages (fused_rank) inside the by-part select: a few numbers per part, never rows.

``SummaryAtParts`` computes, for one stage that declares a ``SummarySpec`` (registry.py;
``selection.is_summary_staged``), the same value its ``global_info`` computes on the general
graph, from the input parts of a by-part select (pipeline._select_by_parts):

    parts ─ Summary[<id>]  (each part read, the earlier stages applied with their infos, the
                            alive rows' summary: fused_rank's per-column [min, max])
          ─ Combine         (a CombineGlobally of those small tuples: the pool's summary)
          ─ SummaryKeys[<id>] (each part read again: the alive rows' ranked value under the
                            pool's summary as 8-byte rank keys, one KeyBatch per part)
          ─ RankOfKeyBatches (the exact rank-n search, shared with the top-fraction stages)
          ─▶ a singleton: ``SummarySpec.finish(summary, ThresholdInfo)``, the side input of
             every later pass

Without a fraction (a fixed threshold on the fused scale) the key pass is skipped. What leaves a
part is one summary (a few floats) and one KeyBatch (8 bytes per alive row); the global steps
hold the per-part summaries and the search's histograms (docs/memory.md). The work functions
are Beam-free (shard_work.part_summary / part_summary_keys) so the local process pool runs them.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_filter.shard_work import SUMMARY_SIDE, part_summary, part_summary_keys, summary_stage
from beam_filter.transforms.local_pool import LocalPoolDoFn
from beam_filter.transforms.thresholds import RankOfKeyBatches


class _PartFn(LocalPoolDoFn):
    side_inputs_arg = True
    hands_on = True             # a few numbers back per part: the next pass reuses the workers

    def __init__(self, select_stages, index: int, child: str | None, embeddings=(), processes=0):
        super().__init__((select_stages, index, child, tuple(embeddings)), processes, stages=select_stages)


class PartSummaryFn(_PartFn):
    """Input part -> the summary of its rows alive at the stage (shard_work.part_summary)."""

    work = staticmethod(part_summary)


class PartSummaryKeysFn(_PartFn):
    """Input part -> the KeyBatch of its alive rows' ranked value under the pool's summary
    (shard_work.part_summary_keys; the summary is the side input ``SUMMARY_SIDE``)."""

    work = staticmethod(part_summary_keys)


class CombineSummaries(beam.CombineFn):
    """The pool's summary from the parts' (``SummarySpec.combine``); the accumulator is one summary."""

    def __init__(self, combine):
        self.combine = combine

    def create_accumulator(self):
        return self.combine([])

    def add_input(self, acc, summary):
        return self.combine([acc, summary])

    def merge_accumulators(self, accs):
        return self.combine(list(accs))

    def extract_output(self, acc):
        return acc


class SummaryAtParts(beam.PTransform):
    """parts -> one singleton: the global value of the summary-staged stage ``stages[index]`` (or of
    its child ``child``, inside a combinator), computed over the rows alive when it is reached.
    ``infos``: {stage id: singleton PCollection} of the earlier stages (their side inputs)."""

    def __init__(self, stages, index: int, child: str | None = None, embeddings=(), infos=None,
                 processes: int = 0):
        super().__init__()
        self.stages, self.index, self.child = list(stages), index, child
        self.embeddings, self.infos, self.processes = tuple(embeddings), dict(infos or {}), processes

    def expand(self, parts):
        spec = summary_stage(self.stages, self.index, self.child).summary_spec()
        side = {k: AsSingleton(v) for k, v in self.infos.items()}
        summary = (parts
                   | "Summary" >> beam.ParDo(PartSummaryFn(self.stages, self.index, self.child, self.embeddings,
                                                           processes=self.processes), **side)
                   | "Combine" >> beam.CombineGlobally(CombineSummaries(spec.combine)))
        finish = spec.finish
        if spec.fraction is None:
            return summary | "Info" >> beam.Map(lambda s: finish(s, None))
        rank = (parts
                | "SummaryKeys" >> beam.ParDo(
                    PartSummaryKeysFn(self.stages, self.index, self.child, self.embeddings,
                                      processes=self.processes),
                    **side, **{SUMMARY_SIDE: AsSingleton(summary)})
                | "RankThreshold" >> RankOfKeyBatches(spec.fraction, spec.label))
        return rank | "Info" >> beam.Map(lambda t, s: finish(s, t), AsSingleton(summary))
