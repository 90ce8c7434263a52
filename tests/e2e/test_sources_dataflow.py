"""A mixed-source Dataflow job states its sources: `beam-filter run --dataflow --dry-run` with named
inputs prints them in its summary and writes them into the job file's pipeline options (what the
Dataflow console shows under "Pipeline options"), each with its glob, fraction, copies and flags."""

from __future__ import annotations

import json

from beam_filter import cli
from beam_filter import dataflow as D

LAUNCH = ["--dataflow", "--project", "my-project", "--region", "us-central1", "--bucket", "gs://my-bucket",
          "--no-image"]


def test_dry_run_job_names_each_source(tmp_path, capsys):
    path = str(tmp_path / "job.json")
    code = cli.main(["run", "--recipe", "datacomp_basic",
                     "--input", "pool=gs://my-bucket/pool/*.tar:external=false",
                     "--input", "cc12m=gs://my-bucket/cc12m/*.tar:fraction=0.5:copies=2",
                     "--input", "evaltrain=gs://my-bucket/in1k/{00000..00003}.tar:copies=3:decontaminate=false",
                     "--output", "gs://my-bucket/out", *LAUNCH, "--dry-run", "--job-file", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    want = {
        "pool": {"input": "gs://my-bucket/pool/*.tar", "fraction": 1.0, "copies": 1, "filtered": True,
                 "external": False, "decontaminated": False},
        "cc12m": {"input": "gs://my-bucket/cc12m/*.tar", "fraction": 0.5, "copies": 2, "filtered": True,
                  "external": True, "decontaminated": False},
        "evaltrain": {"input": "gs://my-bucket/in1k/{00000..00003}.tar", "fraction": 1.0, "copies": 3,
                      "filtered": True, "external": True, "decontaminated": False},
    }
    assert json.loads(out)["sources"] == want
    desc, _ = D.load_job(path)
    opts = desc["environment"]["sdkPipelineOptions"]
    assert json.loads(opts["options"][D.SOURCES_OPTION]) == want
    shown = [d for d in opts["display_data"] if d["key"] == D.SOURCES_OPTION]
    assert len(shown) == 1 and json.loads(shown[0]["value"]) == want


def test_decontaminated_external_sources_are_flagged(tmp_path, capsys):
    path = str(tmp_path / "job.json")
    code = cli.main(["run", "--recipe", "datacomp_basic", "--input", "pool=gs://my-bucket/pool/*.tar:external=false",
                     "--input", "cc12m=gs://my-bucket/cc12m/*.tar", "--decontaminate", "gs://my-bucket/eval/",
                     "--output", "gs://my-bucket/out", *LAUNCH, "--dry-run", "--job-file", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    got = json.loads(out)["sources"]
    assert (got["cc12m"]["external"], got["cc12m"]["decontaminated"]) == (True, True)
    assert (got["pool"]["external"], got["pool"]["decontaminated"]) == (False, False)


def test_a_plain_input_job_has_no_sources_option(tmp_path, capsys):
    path = str(tmp_path / "job.json")
    code = cli.main(["run", "--recipe", "datacomp_basic", "--input", "gs://my-bucket/pool/*.tar",
                     "--output", "gs://my-bucket/out", *LAUNCH, "--dry-run", "--job-file", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "sources" not in json.loads(out)
    desc, _ = D.load_job(path)
    assert D.SOURCES_OPTION not in desc["environment"]["sdkPipelineOptions"]["options"]
