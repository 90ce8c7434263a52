"""exact_dedup in a real Beam pipeline: duplicates by sha256 point at the smallest uid."""

from __future__ import annotations

from beam_filter.records import Verdict
from beam_filter.registry import GroupStage, build_stage


def test_exact_dedup_in_beam_pipeline():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.testing.util import assert_that, equal_to

    from beam_filter.identity import token_uid

    rows = [
        {"uid": "u3", "sha256": "aa"}, {"uid": "u1", "sha256": "aa"}, {"uid": "u2", "sha256": "aa"},
        {"uid": "u4", "sha256": "bb"},
        {"uid": "u6", "sha256": "cc"}, {"uid": "u5", "sha256": "cc"},
        {"uid": "u7", "sha256": None},       # unreadable hash: never a duplicate
        {"uid": "u8"},
    ]
    s = build_stage("exact_dedup", "exact_dedup", {})
    assert isinstance(s, GroupStage)
    with beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(["--runner=DirectRunner"])) as p:
        out = s.verdicts(p | beam.Create(rows)) | beam.Map(lambda kv: (token_uid(kv[0]), kv[1]))
        assert_that(out, equal_to([
            ("u2", Verdict("exact_duplicate_of:u1")), ("u3", Verdict("exact_duplicate_of:u1")),
            ("u6", Verdict("exact_duplicate_of:u5"))]))
