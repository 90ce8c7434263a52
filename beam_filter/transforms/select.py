"""Select phase PTransform: apply the recipe's stages in order to byte-free rows.

Per-row stages are a Map; stages with a global value (an exact top-fraction
threshold) get it as a singleton side input computed from the rows still alive
when the stage is reached; grouping stages (dedup, clustering) return verdicts
keyed by row token (``identity.row_token``: uid, shard and key, so two samples
sharing a uid never receive each other's verdict) that are joined back. Only
rows (no image bytes) are shuffled.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_filter import records as R
from beam_filter.identity import row_token
from beam_filter.recipe import Combinator
from beam_filter.registry import GroupStage, ScoredStage
from beam_filter.selection import (apply_stage, apply_verdict, finish_decision, is_local,
                                   start_decision)


def _global_infos(stage, alive):
    """{side-input name: singleton PCollection} for a stage (or a combinator's children)."""
    parts = stage.children if isinstance(stage, Combinator) else [stage]
    infos = {}
    for s in parts:
        if isinstance(s, ScoredStage):
            pc = s.global_info(alive)
            if pc is not None:
                infos[s.id] = pc
    return infos


def _apply_with_infos(stage):
    def fn(row, **infos):
        info = infos if isinstance(stage, Combinator) else infos.get(stage.id)
        return apply_stage(stage, row, info)
    return fn


def _join_verdicts(stage_id):
    def fn(grouped):
        _, parts = grouped
        verdict = next(iter(parts["verdict"]), None)
        for row in parts["row"]:
            yield apply_verdict(stage_id, row, verdict)
    return fn


def save_info(info, directory, stage_id):
    """``directory``: the output's ``OutputLayout.thresholds_dir``."""
    import json

    from beam_filter import fsio
    from beam_filter.layout import threshold_name

    fsio.write_bytes_atomic(fsio.join(directory, threshold_name(stage_id)),
                            json.dumps(jsonable(info), indent=2, sort_keys=True).encode())


def jsonable(value):
    """Global infos are floats, NamedTuples, dataclasses or dicts: make them JSON."""
    import dataclasses

    import numpy as np

    if hasattr(value, "_asdict"):
        value = value._asdict()
    elif dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}" if value.size > 64 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class ApplyStages(beam.PTransform):
    """rows -> decided rows (``kept``, ``copies``, ``reason``, ``stage``)."""

    def __init__(self, stages, info_dir: str | None = None):
        """``info_dir``: where each global value (e.g. the threshold at the top-30% rank) is
        written as ``<stage id>.json``, so the report states the threshold actually applied."""
        super().__init__()
        self.stages = list(stages)
        self.info_dir = info_dir

    def expand(self, rows):
        rows = rows | "StartDecision" >> beam.Map(start_decision)
        for stage in self.stages:
            if isinstance(stage, GroupStage):
                alive = rows | f"Alive[{stage.id}]" >> beam.Filter(lambda r: r[R.REASON] is None)
                verdicts = stage.verdicts(alive)
                keyed = rows | f"ByUid[{stage.id}]" >> beam.Map(lambda r: (row_token(r), r))
                rows = ({"row": keyed, "verdict": verdicts}
                        | f"Join[{stage.id}]" >> beam.CoGroupByKey()
                        | f"Verdict[{stage.id}]" >> beam.FlatMap(_join_verdicts(stage.id)))
            elif is_local(stage):
                rows = rows | f"Apply[{stage.id}]" >> beam.Map(_apply_with_infos(stage))
            else:
                alive = rows | f"Alive[{stage.id}]" >> beam.Filter(lambda r: r[R.REASON] is None)
                pcolls = _global_infos(stage, alive)
                if self.info_dir:
                    for sid, pc in pcolls.items():
                        pc | f"SaveInfo[{sid}]" >> beam.Map(save_info, self.info_dir, sid)
                infos = {k: AsSingleton(v) for k, v in pcolls.items()}
                rows = rows | f"Apply[{stage.id}]" >> beam.Map(_apply_with_infos(stage), **infos)
        return rows | "FinishDecision" >> beam.Map(finish_decision)
