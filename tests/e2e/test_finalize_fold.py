"""finalize reads the decisions for report.html while it counts them for report.json
(finalize._summary_and_report_fold): the page it writes is the page a fresh `beam-filter report`
draws from the same output, byte for byte, and a fold taken with other stages (or thresholds) than
report.json's is not used."""

from __future__ import annotations

import os

import pytest

import beam_filter.report as report_pkg
import beam_filter.report.data as report_data
from beam_filter.report import write_report

pytestmark = pytest.mark.e2e


@pytest.fixture
def fold_calls(monkeypatch):
    """Count the passes over the decisions (the real fold runs each time)."""
    calls = []
    real = report_data.fold_decisions

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(report_data, "fold_decisions", counted)
    monkeypatch.setattr(report_pkg, "fold_decisions", counted)
    return calls


def _html(out: str) -> bytes:
    with open(os.path.join(out, "report.html"), "rb") as f:
        return f.read()


def _rewritten(out: str) -> bytes:
    before = _html(out)
    os.remove(os.path.join(out, "report.html"))
    write_report(out)
    after = _html(out)
    assert after == before, "finalize's report.html differs from a fresh scan of the same output"
    return after


def test_run_report_equals_a_fresh_scan(pool, run_cli, tmp_path, fold_calls):
    pool_dir, _ = pool
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "quickstart", "--input", f"{pool_dir}/*.tar", "--output", out) == 0
    assert fold_calls == [out]              # one pass for report.html, taken during the summary
    _rewritten(out)
    assert fold_calls == [out, out]


def test_metadata_select_report_equals_a_fresh_scan(datacomp_meta, run_cli, tmp_path, fold_calls):
    out = str(tmp_path / "out")
    args = ["select", "--recipe", "image_based_intersect_clip_score", "--metadata",
            os.path.join(datacomp_meta.dir, "metadata"), "--output", out]
    for o in datacomp_meta.overrides:
        args += ["--set", o]
    assert run_cli(*args) == 0
    assert fold_calls == [out]
    _rewritten(out)


def test_a_fold_with_other_stages_is_not_used(pool, run_cli, tmp_path, fold_calls):
    pool_dir, _ = pool
    out = str(tmp_path / "out")
    assert run_cli("run", "--recipe", "quickstart", "--input", f"{pool_dir}/*.tar", "--output", out) == 0
    meta, _ = report_data.load_meta(out)
    stale = report_data.fold_decisions(out, dict(meta, funnel=[], recipe={}))    # no stage: no overlap axes
    assert repr(report_data._finish(stale, meta, [])) != repr(report_data.scan(out))
    calls = len(fold_calls)
    data = report_data.scan(out, folded=stale)
    assert len(fold_calls) == calls + 1     # folded again with report.json's own stages
    assert repr(data) == repr(report_data.scan(out))
