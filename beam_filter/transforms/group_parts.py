"""Group stages inside the by-part select: slim rows in, one verdicts file per part out.

``GroupAtParts`` is one non-row-wise group stage (dedup, clustering, caption counts,
density pruning) of a recipe selected by parts (pipeline._select_by_parts):

    parts ─ GroupRows[<id>] (each part read, the earlier stages applied with their
            thresholds / verdict files, alive rows cut to identity + the stage's needs())
          ─ stage.verdicts(slim rows)        (the stage's own PTransform, unchanged)
          ─ WriteVerdicts[<id>]: (token, Verdict) keyed by part, one file per part
          ─▶ a singleton: the verdicts directory, the side input of every later pass

No full row crosses a shuffle: the stage's transform holds what its documented bound
says over slim rows (docs/memory.md), the verdicts are grouped by part (token, reason,
a few columns), and the later passes read their part's file (selection.advance_rows).
The files are the output's own (layout.VERDICTS) and removed when the job ends
(output_dir.remove_work_files).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_filter.layout import OutputLayout, shard_stem, verdicts_path
from beam_filter.transforms.local_pool import LocalPoolDoFn
from beam_filter.verdict_files import group_rows, token_shard, write_verdicts


class GroupRowsFn(LocalPoolDoFn):
    """Input part -> the slim rows alive at group stage ``group_index`` (verdict_files.group_rows);
    side inputs, by stage id: thresholds and verdict directories of the earlier stages."""

    work = staticmethod(group_rows)
    side_inputs_arg = True

    def __init__(self, select_stages, group_index, embeddings=(), processes=0):
        super().__init__((select_stages, group_index, tuple(embeddings)), processes, stages=select_stages)

    def emit(self, part, rows):
        yield from rows


def _write_part(item, directory: str, stage_id: str) -> int:
    shard, pairs = item
    return write_verdicts(verdicts_path(directory, stage_id, shard), pairs)


class WriteVerdicts(beam.PTransform):
    """(token, Verdict) -> one verdicts file per part; a singleton with the directory once all are written."""

    def __init__(self, directory: str, stage_id: str):
        super().__init__()
        self.directory, self.stage_id = directory, stage_id

    def expand(self, verdicts):
        directory = self.directory
        return (verdicts
                | "ByPart" >> beam.Map(lambda tv: (shard_stem(token_shard(tv[0])), tv))
                | "GroupByPart" >> beam.GroupByKey()
                | "Write" >> beam.Map(_write_part, directory, self.stage_id)
                | "Count" >> beam.CombineGlobally(sum)
                | "Directory" >> beam.Map(lambda _: directory))


class GroupAtParts(beam.PTransform):
    """parts -> the singleton verdicts directory of ``stages[index]`` (see the module docstring).

    ``infos``: {stage id: singleton PCollection} of the stages before it (rank thresholds,
    earlier verdict directories)."""

    def __init__(self, stages, index: int, layout: OutputLayout, embeddings=(), infos=None, processes=0):
        super().__init__()
        self.stages, self.index, self.layout = list(stages), index, layout
        self.embeddings, self.infos, self.processes = tuple(embeddings), dict(infos or {}), processes

    def expand(self, parts):
        stage = self.stages[self.index]
        # Its own Reshuffle of the part names: without it the local FnApiRunner fuses two group
        # passes reading the same parts into one stage, whose side input (the earlier stage's
        # verdicts directory) then waits on that very stage ("watermark-pending bundles").
        slim = (parts | f"Spread[{stage.id}]" >> beam.Reshuffle()) | f"GroupRows[{stage.id}]" >> beam.ParDo(
            GroupRowsFn(self.stages, self.index, self.embeddings, processes=self.processes),
            **{k: AsSingleton(v) for k, v in self.infos.items()})
        return (stage.verdicts(slim)
                | f"WriteVerdicts[{stage.id}]" >> WriteVerdicts(self.layout.verdicts_dir, stage.id))
