"""Dataflow jobs built for real, offline, by `beam-filter ... --dataflow --dry-run`.

The job description is built by Beam's DataflowRunner (dry run, no network, no credentials)
and checked from what Dataflow would receive: the job JSON and the staged pipeline proto.
Graph rules checked on the proto: accelerator hints on the inference steps only, a Reshuffle
between listing the shards and reading them, and no GroupByKey / side input fed by a
PCollection that carries Samples (image bytes) -- Samples must become rows (ToRow) first.
The option mapping itself is unit-tested in tests/unit/test_dataflow_options.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex

import pytest

from beam_filter import cli
from beam_filter import dataflow as D

REPO = str(pathlib.Path(__file__).resolve().parents[2])
IMAGE = "us-central1-docker.pkg.dev/my-project/beam-filter/worker:py3.11-beam2.77.0-test"
ACCEL = "type:nvidia-l4;count:1;machine_type:g2-standard-8;install-nvidia-driver"
GBK = "beam:transform:group_by_key:v1"
PARDO = "beam:transform:pardo:v1"
RESHUFFLE = "beam:transform:reshuffle:v1"
ACCEL_URN = "beam:resources:accelerator:v1"
GS_INPUT = "gs://my-bucket/pool/*.tar"
LAUNCH = ["--dataflow", "--project", "my-project", "--region", "us-central1", "--bucket", "gs://my-bucket"]
RUN = ["run", "--recipe", "datacomp_clip_l14_30pct", "--input", GS_INPUT, "--output", "gs://my-bucket/out"]


def _cli(argv, capsys):
    """(exit code, stdout, stderr) of ``beam-filter argv``, in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the command line: one-line errors before anything is listed or built -------------------

@pytest.mark.parametrize("argv, why", [
    (RUN + ["--gpu-count", "1"], "--gpu-count is a Dataflow option: add --dataflow (or --runner=DataflowRunner)"),
    (RUN + LAUNCH + ["--job-file", "x.json"], "--job-file is only written with --dry-run"),
    (RUN + LAUNCH + ["--dry-run"], "--dry-run needs --job-file"),
    (RUN[:4] + ["/data/pool/*.tar"] + RUN[5:] + LAUNCH, "input /data/pool/*.tar: Dataflow workers cannot read"),
    (["select", "--recipe", "datacomp_basic", "--metadata", "/data/md", "--output", "gs://b-x/o"] + LAUNCH,
     "input /data/md: Dataflow workers cannot read"),
    (RUN + LAUNCH + ["--gpu-count", "two"], "argument --gpu-count: must be a positive integer"),
    (RUN + LAUNCH + ["--mps"], "--mps needs --gpu-type"),
    (RUN + LAUNCH[:-2], "Dataflow needs --bucket"),
    (RUN + LAUNCH + ["--colour"], "unknown option --colour"),
    (["reshard", "--decisions", "gs://b-x/d", "--input", GS_INPUT, "--output", "gs://b-x/o", "--gpu-type",
      "nvidia-l4"] + LAUNCH, "unknown option --gpu-type"),
])
def test_cli_dataflow_errors_are_one_line(argv, why, capsys):
    code, _, err = _cli(argv, capsys)
    assert code == 2, err
    assert why in err and len(err.strip().splitlines()) == 1, err


# ---- the job description, built offline by Beam's DataflowRunner -----------------

@pytest.fixture(scope="module")
def gpu_job(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("df") / "job.json")
    code = cli.main(RUN + LAUNCH + ["--image", IMAGE, "--machine-type", "n2-standard-8", "--max-workers", "16",
                                    "--gpu-type", "nvidia-l4", "--gpu-min-ram", "16GB",
                                    "--job-name", "L4_job", "--dry-run", "--job-file", path])
    assert code == 0
    desc, proto = D.load_job(path)
    return desc, proto
def _leaves(proto):
    return {tid: t for tid, t in proto.components.transforms.items() if not t.subtransforms}


def _consumers(proto):
    """pcoll id -> [(transform id, input tag)] over leaf transforms."""
    out = {}
    for tid, t in _leaves(proto).items():
        for tag, pc in t.inputs.items():
            out.setdefault(pc, []).append((tid, tag))
    return out


def _side_input_tags(t) -> set:
    from apache_beam.portability.api import beam_runner_api_pb2

    if t.spec.urn != PARDO:
        return set()
    return set(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs)


def _by_name(proto, name):
    found = [t for t in proto.components.transforms.values() if t.unique_name == name]
    assert len(found) == 1, (name, len(found))
    return found[0]


def test_accelerator_hints_on_inference_steps_and_nowhere_else(gpu_job):
    _, proto = gpu_job
    envs = proto.components.environments
    hinted, inference = set(), set()
    for t in _leaves(proto).values():
        if not t.environment_id:
            continue
        if ACCEL_URN in envs[t.environment_id].resource_hints:
            hinted.add(t.unique_name)
            assert envs[t.environment_id].resource_hints[ACCEL_URN].decode() == ACCEL
            assert envs[t.environment_id].resource_hints["beam:resources:min_ram_bytes:v1"] == b"16000000000"
        if t.unique_name.startswith("Models/Infer["):
            inference.add(t.unique_name)
    assert inference and hinted == inference
    assert any(n.endswith("BeamML_RunInference") for n in hinted)
    # reading, features, rules, thresholds, writers stay in the un-hinted environment
    for name in ("Read/ReadShards/ParDo(ReadShardFn)", "ToRow", "WriteTables/WriteShardFiles",
                 "Reshard/WriteOutputShard"):
        t = _by_name(proto, name)
        assert ACCEL_URN not in envs[t.environment_id].resource_hints, name


def test_container_image_everywhere(gpu_job):
    desc, proto = gpu_job
    from apache_beam.portability.api import beam_runner_api_pb2

    images = {beam_runner_api_pb2.DockerPayload.FromString(e.payload).container_image
              for e in proto.components.environments.values()}
    assert images == {IMAGE}
    pool = desc["environment"]["workerPools"][0]
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {IMAGE}
    assert len(pool["sdkHarnessContainerImages"]) == 2       # CPU and GPU environments
    assert pool["machineType"] == "n2-standard-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 16
    # the image has the project: nothing to pip-install on workers
    assert not any(p["name"] == "workflow.tar.gz" for p in pool.get("packages", []))
    opts = desc["environment"]["sdkPipelineOptions"]["options"]
    assert opts["sdk_container_image"] == IMAGE
    assert opts["dry_run"] is False
    assert not any(k.startswith("beam_filter_") for k in opts)
    assert "use_runner_v2" in desc["environment"]["experiments"]
    assert opts["pipelineUrl"].startswith("gs://my-bucket/staging/") and opts["pipelineUrl"].endswith("/pipeline.pb")
    assert desc["type"] == "JOB_TYPE_BATCH" and desc["name"] == "l4-job"


def test_reshuffle_between_listing_and_reading(gpu_job):
    _, proto = gpu_job
    comps = proto.components
    reader = _by_name(proto, "Read/ReadShards/ParDo(ReadShardFn)")
    (paths_pc,) = reader.inputs.values()
    producers = [t for t in comps.transforms.values() if paths_pc in t.outputs.values()]
    reshuffle = [t for t in producers if t.spec.urn == RESHUFFLE]
    assert len(reshuffle) == 1, [t.unique_name for t in producers]
    (listed_pc,) = reshuffle[0].inputs.values()
    lister = [t for t in comps.transforms.values() if listed_pc in t.outputs.values() and t.subtransforms]
    assert [t.unique_name for t in lister] == ["Read/ListShards"]
    # the reshuffle really contains a GroupByKey (a fusion break on Dataflow)
    assert GBK in _descendant_urns(comps, reshuffle[0])


def _descendant_urns(comps, t) -> set:
    urns = set()
    for sub in t.subtransforms:
        child = comps.transforms[sub]
        urns |= {child.spec.urn} | _descendant_urns(comps, child)
    return urns


def test_no_shuffle_or_side_input_carries_samples(gpu_job):
    """Walk forward from the reader's Sample output: everything must be per-element
    ParDo/Flatten until ToRow turns Samples into rows; no GroupByKey, no side input."""
    _, proto = gpu_job
    leaves = _leaves(proto)
    consumers = _consumers(proto)
    reader = _by_name(proto, "Read/ReadShards/ParDo(ReadShardFn)")
    samples_pc = reader.outputs["None"]
    seen, frontier, reached_torow = set(), [samples_pc], False
    while frontier:
        pc = frontier.pop()
        if pc in seen:
            continue
        seen.add(pc)
        for tid, tag in consumers.get(pc, []):
            t = leaves[tid]
            assert t.spec.urn != GBK, f"{t.unique_name} groups Samples (image bytes)"
            assert tag not in _side_input_tags(t), f"{t.unique_name} takes Samples as a side input"
            assert t.spec.urn in (PARDO, "beam:transform:flatten:v1"), (t.unique_name, t.spec.urn)
            if t.unique_name == "ToRow":
                reached_torow = True
                continue                      # rows from here on
            frontier.extend(t.outputs.values())
    assert reached_torow
    assert len(seen) >= 6                     # reader -> partition -> model input -> infer -> columns -> rejoin
    # and the graph does shuffle rows downstream (thresholds, per-shard gather): the walk is not vacuous
    assert any(t.spec.urn == GBK and t.unique_name.startswith("Select/") for t in leaves.values())
    assert any(t.spec.urn == GBK and t.unique_name.startswith("WriteTables/") for t in leaves.values())


def test_without_image_the_package_is_staged_offline(tmp_path, capsys):
    path = str(tmp_path / "job.json")
    code, out, err = _cli(["score", "--recipe", "datacomp_basic", "--input", GS_INPUT, "--output",
                           "gs://my-bucket/out", *LAUNCH, "--no-image", "--dry-run", "--job-file", path], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["resource_hints"] == {}
    desc, proto = D.load_job(path)
    names = [p["name"] for p in desc["environment"]["workerPools"][0]["packages"]]
    assert "workflow.tar.gz" in names                     # the sdist Beam builds from setup.py
    assert os.path.getsize(os.path.join(summary["staging_dir"], "workflow.tar.gz")) > 10_000
    hints = [dict(e.resource_hints) for e in proto.components.environments.values()]
    assert all(ACCEL_URN not in h for h in hints)
    assert desc["environment"]["sdkPipelineOptions"]["options"]["setup_file"].endswith("setup.py")


# ---- the documented commands ---------------------------------------------------------

def _documented_dry_runs(doc: str) -> list[list[str]]:
    """Every ``beam-filter ... --dry-run`` command in the bash blocks of ``doc``, as argv."""
    text = open(os.path.join(REPO, doc)).read()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["beam-filter"] and "--dry-run" in argv:
                found.append(argv[1:])
    return found


DOCUMENTED = [(doc, argv) for doc in ("README.md", "docs/dataflow.md") for argv in _documented_dry_runs(doc)]


def test_the_docs_have_dry_run_examples():
    assert {doc for doc, _ in DOCUMENTED} == {"README.md", "docs/dataflow.md"}
    assert len(DOCUMENTED) >= 3


@pytest.mark.parametrize("doc, argv", DOCUMENTED, ids=[f"{d}:{a[0]}:{i}" for i, (d, a) in enumerate(DOCUMENTED)])
def test_documented_example_builds_a_job_offline(doc, argv, tmp_path, capsys):
    """The worked examples (README, docs/dataflow.md) parse and build their job, offline."""
    path = str(tmp_path / "job.json")
    argv = [path if prev == "--job-file" else a for prev, a in zip([None] + argv, argv)]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    desc, proto = D.load_job(path)
    assert desc["type"] == "JOB_TYPE_BATCH"
    hinted = {t.unique_name for t in _leaves(proto).values()
              if t.environment_id and ACCEL_URN in proto.components.environments[t.environment_id].resource_hints}
    if "--gpu-type" in argv and "--mps" not in argv:
        assert hinted and all(n.startswith("Models/Infer[") for n in hinted), hinted
    else:
        assert not hinted
    if "--mps" in argv:
        assert any("use_nvidia_mps" in o for o in desc["environment"]["serviceOptions"])
    if "--build-image" in argv:
        assert "+ docker build -t " in err and "+ docker push " in err
