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
    started = []
    real = concurrent.futures.ProcessPoolExecutor.__init__

    def counted(self, *args, **kwargs):
        started.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "__init__", counted)
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
