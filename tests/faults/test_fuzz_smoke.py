"""Smoke run of the shard fuzzer (tests/faults/fuzz.py): every mutation kind once, no failure allowed.

Runs the fuzzer's five *cover* iterations for seed 0 (the real CLI in a subprocess, ~35-50 s on
a 2-core machine): two runs that together apply every structure- and byte-level mutation, one
with a directory and a dangling symlink named ``*.tar``, one where every shard is empty, and one
whose glob matches nothing. The fuzzer's invariants are listed in its module docstring. For a
longer campaign: ``make fuzz`` (FUZZ_SECONDS, FUZZ_SEED).
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

pytestmark = pytest.mark.e2e

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("beam_filter_fuzz", os.path.join(HERE, "fuzz.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fuzz_cover_iterations_find_no_failure(tmp_path):
    fuzz = _load_fuzz()
    log = []
    campaign = fuzz.Campaign(str(tmp_path / "fuzz"), seed=0, recipe="quickstart", timeout=180,
                             minimize=False, log=log.append)
    failures = campaign.run(seconds=0, cover_only=True)

    assert campaign.iterations == fuzz.COVER_ITERATIONS
    missing = [k for k in fuzz.KINDS if not campaign.kind_counts.get(k)]
    assert not missing, f"mutation kinds not exercised: {missing}"
    assert not failures, "\n".join(log) + "\n" + campaign.summary()
