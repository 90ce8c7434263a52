"""`beam-filter build-centroids --distributed` (a Beam graph on the local runner) writes the same
centroids file and assignment files as the one-machine command, and its options fail in one line."""

from __future__ import annotations

import glob
import os

import pytest


def _files(directory) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(directory, "*")))}


def test_distributed_command_writes_what_the_one_machine_command_writes(datacomp_meta, run_cli, tmp_path):
    meta = os.path.join(datacomp_meta.dir, "metadata")
    common = ["build-centroids", "--metadata", meta, "--num-clusters", "8", "--sample-ratio", "0.7",
              "--sample-salt", "s1"]
    assert run_cli(*common, "--output", str(tmp_path / "one.npy"), "--assign", str(tmp_path / "a1")) == 0
    assert run_cli(*common, "--output", str(tmp_path / "dist.npy"), "--assign", str(tmp_path / "a2"),
                   "--distributed") == 0
    assert open(tmp_path / "one.npy", "rb").read() == open(tmp_path / "dist.npy", "rb").read()
    one, dist = _files(tmp_path / "a1"), _files(tmp_path / "a2")
    assert len(one) == 3 and one == dist


@pytest.mark.parametrize("extra, why", [
    (["--direct_num_workers=2"], "apply to --distributed"),
    (["--bucket", "gs://b-x"], "--bucket is a Dataflow option"),
    (["--dataflow", "--project", "p", "--region", "us-central1", "--bucket", "gs://b-x"],
     "Dataflow workers cannot write a local path"),
])
def test_launch_options_fail_in_one_line(datacomp_meta, tmp_path, capsys, extra, why):
    from beam_filter import cli

    code = cli.main(["build-centroids", "--metadata", os.path.join(datacomp_meta.dir, "metadata"),
                     "--output", str(tmp_path / "c.npy"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "c.npy")
