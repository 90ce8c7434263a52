"""A light pass over the parts (rank keys) leaves its process pool to the select after it
(transforms/local_pool.py ``hands_on``): one pool per top-fraction select instead of two, the
same decisions, and no pool left running when the pipeline is done. ``--direct_num_workers=N``
sizes that one pool (Beam itself runs one bundle per step: N bundles started N pools of N)."""

from __future__ import annotations

import concurrent.futures
import os

import pytest

from beam_filter.transforms import local_pool

pytestmark = pytest.mark.e2e


@pytest.fixture
def pools_started(monkeypatch):
    """The pools the pipeline's steps started (a handed pool counts once), not report.html's
    chart pool (local_pool.preloaded_pool)."""
    started = []
    real = local_pool.LocalPoolDoFn._start_pool

    def counted(self):
        pool = real(self)
        if not any(pool is p for p in started):
            started.append(pool)
        return pool

    monkeypatch.setattr(local_pool.LocalPoolDoFn, "_start_pool", counted)
    return started


def _decisions(out: str) -> dict:
    d = os.path.join(out, "decisions")
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def test_top_fraction_select_runs_one_pool(datacomp_meta, run_cli, tmp_path, pools_started, monkeypatch):
    meta = os.path.join(datacomp_meta.dir, "metadata")
    out = str(tmp_path / "one_pool")
    args = ["select", "--recipe", "datacomp_clip_l14_30pct", "--metadata", meta, "--direct_num_workers=2"]
    assert run_cli(*args, "--output", out) == 0
    assert len(pools_started) == 1             # RankKeys' pool went on to SelectParts
    assert pools_started[0]._max_workers == 2
    assert not local_pool._HANDED
    # the same bytes with every pass starting its own pool
    monkeypatch.setattr(local_pool.LocalPoolDoFn, "hands_on", False)
    from beam_filter.transforms.fused import PartRankKeysFn

    monkeypatch.setattr(PartRankKeysFn, "hands_on", False)
    own = str(tmp_path / "own_pools")
    assert run_cli(*args, "--output", own) == 0
    assert len(pools_started) == 3
    assert _decisions(out) == _decisions(own)
    with open(os.path.join(out, "uids.npy"), "rb") as a, open(os.path.join(own, "uids.npy"), "rb") as b:
        assert a.read() == b.read()


def test_a_handed_pool_nobody_takes_is_stopped(tmp_path):
    """stop_handed_pools ends a pool left for a step that never came."""
    import multiprocessing

    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
    assert pool.submit(os.getpid).result() != os.getpid()
    local_pool._HANDED[("test", ())] = pool
    local_pool.stop_handed_pools()
    assert not local_pool._HANDED
    with pytest.raises(RuntimeError):
        pool.submit(os.getpid)                  # shut down


CHARTS_SCRIPT = """
import json, sys
from beam_filter.transforms.local_pool import warm_forkserver
if sys.argv[2] == "warm":
    warm_forkserver(["beam_filter.report", "beam_filter.report.plots"])
from beam_filter.report import chart_orders, make_plots, scan
data = scan(sys.argv[1], samples_per_group=0)
drawn = make_plots(data)
print(json.dumps({"matplotlib_here": "matplotlib" in sys.modules, "charts": len(chart_orders(data)),
                  "png": {k: v.hex() for k, v in sorted(drawn.items())}}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a chart pool needs two cores")
def test_report_charts_drawn_on_the_warm_fork_server_are_the_inline_bytes(datacomp_meta, run_cli, tmp_path):
    """With the fork server warmed with matplotlib (the launcher's warm_forkserver), report.html's
    charts are drawn on its workers and the launching process never imports matplotlib; without
    it they are drawn inline. The PNG bytes are the same."""
    import json
    import subprocess
    import sys

    out = str(tmp_path / "out")
    assert run_cli("select", "--recipe", "datacomp_b32_th025", "--metadata",
                   os.path.join(datacomp_meta.dir, "metadata"), "--output", out) == 0
    runs = {}
    for mode in ("warm", "cold"):
        done = subprocess.run([sys.executable, "-c", CHARTS_SCRIPT, out, mode], capture_output=True, text=True,
                              check=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    assert runs["warm"]["charts"] >= 3
    assert runs["warm"]["matplotlib_here"] is False     # drawn on the pool
    assert runs["cold"]["matplotlib_here"] is True      # drawn here
    assert runs["warm"]["png"] == runs["cold"]["png"]
