"""Shared fixtures: generated sample pools and a helper to run the real CLI in-process.

Pools are generated once per test session (they are deterministic), in a
session temp dir, so tests never depend on files outside the repository.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """A 240-sample pool (seed 0) with broken shards: what `make demo` uses, plus file damage."""
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("pool")
    manifest = make_sample(str(d), samples=240, seed=0, broken_shards=True)
    return str(d), manifest


@pytest.fixture(scope="session")
def clean_pool(tmp_path_factory):
    """A 120-sample pool without broken shards (seed 3)."""
    from beam_filter.devtools.sample_pool import make_sample

    d = tmp_path_factory.mktemp("clean_pool")
    manifest = make_sample(str(d), samples=120, seed=3, shard_size=40)
    return str(d), manifest


def run_cli(*argv) -> int:
    """Run `beam-filter ARGV` in-process (the pipeline itself still uses worker processes)."""
    from beam_filter.cli import main

    return main([str(a) for a in argv] + (["--no-progress"] if argv and argv[0] in (
        "run", "score", "select", "reshard") else []))
