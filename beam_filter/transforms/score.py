"""Score phase PTransforms: read shards, add features, run the model stages.

Reading, feature extraction and inference stay fused (design rule 1, ARCHITECTURE.md): the
Sample with its image bytes flows from the reader through every RunInference
without a shuffle; only the byte-free rows leave this module.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_filter import records as R
from beam_filter.reading import FileError, read_shard
from beam_filter.shard_work import StageClock, add_features

FILE_ERRORS = "file_errors"
NAMESPACE = "beam_filter"


def flush_clock(clock: StageClock) -> None:
    for stage_id, (seconds, n) in sorted(clock.totals.items()):
        Metrics.counter(NAMESPACE, f"stage_us:{stage_id}").inc(int(seconds * 1e6))
        Metrics.counter(NAMESPACE, f"stage_n:{stage_id}").inc(n)
    clock.totals.clear()


class ReadShardFn(beam.DoFn):
    """One tar in, its Samples out; file-level damage goes to the ``file_errors`` output."""

    def __init__(self, feature_stages=()):
        self.feature_stages = list(feature_stages)

    def setup(self):
        self.timers = StageClock()
        self.samples = Metrics.counter(NAMESPACE, "samples_read")
        self.bad_files = Metrics.counter(NAMESPACE, "file_errors")

    def process(self, path: str):
        for item in read_shard(path):
            if isinstance(item, FileError):
                self.bad_files.inc()
                yield beam.pvalue.TaggedOutput(FILE_ERRORS, item.as_dict())
                continue
            self.samples.inc()
            if item.error is not None:
                Metrics.counter(NAMESPACE, f"read_error:{item.error}").inc()
            yield add_features(item, self.feature_stages, self.timers)
        flush_clock(self.timers)


class ReadWebDataset(beam.PTransform):
    """Shard paths -> Samples (main output) and file errors (``file_errors`` output).

    The path list is reshuffled first so that on Dataflow shards spread over
    workers instead of staying in the bundle that listed them.
    """

    def __init__(self, paths: list[str], feature_stages=()):
        super().__init__()
        self.paths = sorted(paths)
        self.feature_stages = list(feature_stages)

    def expand(self, pbegin):
        return (pbegin
                | "ListShards" >> beam.Create(self.paths)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.ParDo(ReadShardFn(self.feature_stages)).with_outputs(
                    FILE_ERRORS, main="samples"))


def _fail(sample, reason: str):
    """One sample the stage could not handle: it keeps flowing, with ``reason`` as its decision."""
    if sample.error is None:
        sample.error = reason
        Metrics.counter(NAMESPACE, f"read_error:{reason}").inc()
    return sample


class _ModelInputFn(beam.DoFn):
    """(sample, model input) pairs; a sample whose input cannot be built leaves by ``failed``
    with reason ``feature_error:<stage>`` instead of failing the bundle."""

    def __init__(self, stage):
        self.stage = stage

    def process(self, sample):
        try:
            yield sample, self.stage.model_input(sample)
        except Exception as e:  # noqa: BLE001 - one bad record never fails the job
            logging.getLogger(__name__).warning("stage %s: model input failed for %s/%s: %s: %s",
                                                self.stage.id, sample.shard, sample.key, type(e).__name__, e)
            yield beam.pvalue.TaggedOutput("failed", _fail(sample, f"feature_error:{self.stage.id}"))


def _merge_inference(stage):
    def merge(keyed):
        sample, result = keyed
        # Handlers may return PredictionResult (Beam's convention) or the plain per-example output.
        try:
            cols = stage.model_columns(getattr(result, "inference", result))
        except Exception as e:  # noqa: BLE001 - an output the stage cannot read drops that sample only
            logging.getLogger(__name__).warning("stage %s: unreadable model output for %s/%s: %s: %s",
                                                stage.id, sample.shard, sample.key, type(e).__name__, e)
            return _fail(sample, f"model_error:{stage.id}")
        sample.features.update(cols)
        if cols.get(R.READ_ERROR) and sample.error is None:
            sample.error = cols[R.READ_ERROR]
            Metrics.counter(NAMESPACE, f"read_error:{sample.error}").inc()
        return sample
    return merge


def _merge_group(group):
    """``_merge_inference`` of each member of a shared-decode group, in order (DecodeGroup's rules)."""
    def one(stage, sample, result):
        return _merge_inference(stage)((sample, result))

    def failed(stage, sample):
        return _fail(sample, f"feature_error:{stage.id}")

    def merge(keyed):
        sample, result = keyed
        return group.merge_group_output(sample, getattr(result, "inference", result), one, failed)
    return merge


class RunModelStages(beam.PTransform):
    """Samples -> Samples with every model stage's columns, one RunInference per model.

    Unusable samples (read errors) bypass the models and rejoin afterwards, so
    they still get their decision row. ``resource_hints`` (e.g. accelerator) are
    put on the inference steps only, so Dataflow can right-fit CPU and GPU work. Consecutive
    stages that share one image decode (``models/shared_decode.plan``) are one step
    ``Infer[<id>+<id>]``: one RunInference whose handler holds all their models.
    """

    def __init__(self, stages, resource_hints: dict | None = None):
        super().__init__()
        self.stages = list(stages)
        self.resource_hints = resource_hints or {}

    def expand(self, samples):
        # Imported here: apache_beam.ml imports torch (3.5 s), which rule-only runs never need.
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        from beam_filter.models.shared_decode import DecodeGroup, plan

        for stage in plan(self.stages):
            usable, unusable = samples | f"Usable[{stage.id}]" >> beam.Partition(
                lambda s, _: 0 if s.error is None else 1, 2)
            inference = RunInference(KeyedModelHandler(stage.model_handler()))
            if self.resource_hints:
                inference = inference.with_resource_hints(**self.resource_hints)
            inputs = usable | f"ModelInput[{stage.id}]" >> beam.ParDo(_ModelInputFn(stage)).with_outputs(
                "failed", main="ok")
            scored = (inputs.ok
                      | f"Infer[{stage.id}]" >> inference
                      | f"Columns[{stage.id}]" >> beam.Map(_merge_group(stage) if isinstance(stage, DecodeGroup)
                                                           else _merge_inference(stage)))
            samples = (scored, inputs.failed, unusable) | f"Rejoin[{stage.id}]" >> beam.Flatten()
        return samples
