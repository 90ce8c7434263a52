"""Every failure is one line on stderr (issue 12, "Trust", cases 3, 4, 5 and 7).

User mistakes exit 2, I/O failures (read-only output, disk full, storage unreachable)
exit 1, unforeseen errors exit 1 with their type and "(run with --verbose ...)". Errors
raised inside the pipeline come out as that same one line, without Beam's traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def cli(*argv, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "beam_filter.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def one_line(code, err, expected_code):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("beam-filter: error: ")
    return lines[0]


def run_args(pool_dir, out, *extra):
    return ["run", "--input", f"{pool_dir}/*.tar", "--output", out, "--no-progress", *extra]


def recipe_file(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- case 3: one line, never a traceback --------------------------------------------------

def test_bad_yaml_in_set(clean_pool, tmp_path):
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", "datacomp_basic",
                                 "--set", "datacomp_basic.min_side=[1,2"))
    line = one_line(code, err, 2)
    assert "--set 'datacomp_basic.min_side=[1,2': the value is not valid YAML" in line


def test_unknown_runner(clean_pool, tmp_path):
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", "datacomp_basic",
                                 "--runner=NoSuchRunner"))
    assert "--runner=NoSuchRunner: unknown runner" in one_line(code, err, 2)
    assert not (tmp_path / "o").exists()            # refused before anything was written


@pytest.mark.parametrize("content, fusion", [
    (b"not a uid file at all\n", []),                    # raised in a pool worker (fused path) ...
    (b"not a uid file at all\n", ["--no-fusion"]),       # ... and in a Beam DoFn
    (b"", []), (b"\x93NUMPY\x01\x00garbage", []), ("float64", [])])
def test_garbage_uid_subset_file(clean_pool, tmp_path, content, fusion):
    path = tmp_path / "uids.npy"
    if content == "float64":
        np.save(path, np.zeros((4, 2)))                 # a real .npy, but not u8,u8 records
    else:
        path.write_bytes(content)
    recipe = recipe_file(tmp_path, f"name: t\nstages:\n  - uid_subset: {{path: {path}}}\n")
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", recipe, *fusion))
    line = one_line(code, err, 2)
    assert f"{path}: not a DataComp uid file" in line
    assert "[while running" not in line


def test_user_error_inside_the_pipeline_is_one_line(clean_pool, tmp_path):
    missing = tmp_path / "missing.npy"
    recipe = recipe_file(tmp_path, f"name: t\nstages:\n  - uid_subset: {{path: {missing}}}\n")
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", recipe, "--no-fusion"))
    assert one_line(code, err, 2) == f"beam-filter: error: uid subset file not found: {missing}"


@pytest.fixture(scope="module")
def decided(clean_pool, tmp_path_factory, run_cli):
    out = tmp_path_factory.mktemp("decided") / "out"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{clean_pool[0]}/*.tar",
                   "--output", out) == 0
    return out


def test_reshard_refuses_damaged_decision_files(clean_pool, decided, tmp_path):
    import pyarrow.parquet as pq

    bad = tmp_path / "bad"
    shutil.copytree(decided / "decisions", bad / "decisions")
    first = sorted((bad / "decisions").iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])            # truncated
    code, _, err = cli("reshard", "--decisions", bad, "--input", f"{clean_pool[0]}/*.tar",
                       "--output", tmp_path / "o1", "--no-progress")
    assert f"--decisions: {first} is not a readable parquet file" in one_line(code, err, 2)

    table = pq.read_table(sorted((decided / "decisions").iterdir())[0])
    pq.write_table(table.drop(["copies", "kept"]), first)     # readable, but not a decisions file
    code, _, err = cli("reshard", "--decisions", bad, "--input", f"{clean_pool[0]}/*.tar",
                       "--output", tmp_path / "o2", "--no-progress")
    assert f"--decisions: {first} lacks column(s) kept, copies" in one_line(code, err, 2)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unforeseen_error_is_one_line_and_verbose_shows_it(decided, tmp_path):
    scores = tmp_path / "scores_dir"
    shutil.copytree(decided / "scores", scores / "scores")
    # A scores file without its `key` column: readable, with every column the recipe reads, yet
    # nothing the select phase can handle -- an error nobody foresaw.
    import pyarrow.parquet as pq

    broken = sorted((scores / "scores").iterdir())[0]
    pq.write_table(pq.read_table(broken).drop(["key"]), broken)
    code, _, err = cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output",
                       tmp_path / "o", "--no-progress")
    line = one_line(code, err, 1)
    assert "KeyError: " in line and line.endswith("(run with --verbose for the traceback)")
    code, _, err = cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output",
                       tmp_path / "o2", "--no-progress", "--verbose")
    assert code == 1 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("beam-filter: error: KeyError: ")


def test_a_corrupt_scores_file_is_named_before_any_work(decided, tmp_path):
    scores = tmp_path / "scores_dir"
    shutil.copytree(decided / "scores", scores / "scores")
    broken = sorted((scores / "scores").iterdir())[0]
    broken.write_bytes(b"garbage")
    code, _, err = cli("select", "--recipe", "datacomp_basic", "--scores", scores, "--output",
                       tmp_path / "o", "--no-progress")
    line = one_line(code, err, 2)
    assert str(broken) in line and "not a readable parquet file" in line


def test_missing_local_weights_fail_when_the_recipe_loads(clean_pool, tmp_path):
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", "datacomp_b32_th025",
                                 "--set", f"clip.pretrained={tmp_path}/nope.pt"))
    line = one_line(code, err, 2)
    assert f"pretrained='{tmp_path}/nope.pt': no such checkpoint file" in line
    assert "--set clip_b32.pretrained=" in line
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", "mlm_filter_su85",
                                 "--set", f"mlm.model={tmp_path}/no_checkpoint"))
    line = one_line(code, err, 2)
    assert "no_checkpoint' is neither an existing local directory" in line and "--set mlm.model=" in line
    assert not (tmp_path / "o").exists()


def test_hub_weights_that_cannot_be_fetched_offline(clean_pool, tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o1", "--recipe", "mlm_filter_su85"), env=offline)
    line = one_line(code, err, 2)
    assert "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in line
    assert "--set mlm.model=" in line
    # a CLIP pretrained tag is fetched when the model loads, inside the pipeline
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o2", "--recipe", "datacomp_b32_th025"), env=offline)
    line = one_line(code, err, 2)
    assert "cannot load CLIP weights 'ViT-B-32'/'openai'" in line and "clip.pretrained=" in line


# ---- read-only output, disk full: exit 1 ----------------------------------------------------

@contextlib.contextmanager
def tmpfs(path, options):
    """A small tmpfs at ``path`` (root with CAP_SYS_ADMIN only; otherwise the test is skipped)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output(clean_pool, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code, _, err = cli(*run_args(clean_pool[0], ro / "out", "--recipe", "datacomp_basic"))
        assert one_line(code, err, 1) == (f"beam-filter: error: Read-only file system: '{ro / 'out'}' "
                                         "(EROFS; the output is on a read-only file system)")


def test_disk_full(clean_pool, tmp_path):
    with tmpfs(tmp_path / "small", "size=1m") as small:
        code, _, err = cli(*run_args(clean_pool[0], small / "out", "--recipe", "datacomp_basic"))
        line = one_line(code, err, 1)
        assert "No space left on device" in line and "(ENOSPC; the disk is full)" in line


# ---- case 4: NaN and infinity are not numbers a threshold can use ------------------------

@pytest.mark.parametrize("stage, value", [("clip: {threshold: .nan}", "nan"),
                                          ("clip: {threshold: -.inf}", "-inf"),
                                          ("datacomp_basic: {max_aspect: .inf}", "inf")])
def test_non_finite_parameters_are_refused(clean_pool, tmp_path, stage, value):
    recipe = recipe_file(tmp_path, f"name: t\nstages:\n  - {stage}\n")
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", recipe))
    assert f"={value} must be a finite number" in one_line(code, err, 2)


def test_non_finite_set_override_is_refused(clean_pool, tmp_path):
    code, _, err = cli(*run_args(clean_pool[0], tmp_path / "o", "--recipe", "datacomp_b32_th025",
                                 "--set", "clip.threshold=nan"))
    assert "stage 'clip_b32': threshold=nan must be a finite number" in one_line(code, err, 2)


# ---- case 5: unreachable remote storage fails fast -----------------------------------------

def test_gs_input_without_credentials_fails_within_the_timeout(tmp_path):
    env = {"BEAM_FILTER_IO_TIMEOUT_S": "5", "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")}
    t0 = time.time()
    code, _, err = cli("run", "--recipe", "datacomp_basic", "--input", "gs://beam-filter-no-such-bucket/p/*.tar",
                       "--output", tmp_path / "o", "--no-progress", env=env, timeout=120)
    elapsed = time.time() - t0
    line = one_line(code, err, 1)
    assert elapsed < 25, elapsed
    assert "gs://beam-filter-no-such-bucket/p/*.tar" in line
    assert "gcloud auth application-default login" in line


# ---- case 7: files an --input glob matches that are not shards are named --------------------

def test_non_tar_inputs_are_reported(clean_pool, tmp_path):
    from beam_filter.cli import match_inputs

    pool = tmp_path / "pool"
    shutil.copytree(clean_pool[0], pool, ignore=lambda d, names: [n for n in names if not n.endswith(".tar")])
    (pool / "extra.tar.gz").write_bytes(b"\x1f\x8b compressed")
    (pool / "README.txt").write_text("hello")
    shards, skipped = match_inputs([f"{pool}/*"])
    assert shards and all(s.endswith(".tar") for s in shards)
    assert skipped == [str(pool / "README.txt"), str(pool / "extra.tar.gz")]
    code, out, err = cli("run", "--recipe", "datacomp_basic", "--input", f"{pool}/*", "--output",
                         tmp_path / "o", "--no-progress")
    assert code == 0, err
    warnings = [ln for ln in err.strip().splitlines() if ln]
    assert len(warnings) == 1 and warnings[0].startswith("beam-filter: warning: skipping ")
    assert warnings[0] == ("beam-filter: warning: skipping 2 file(s) matched by --input that are not .tar "
                           f"shards (listed in report.json): {pool}/README.txt, {pool}/extra.tar.gz")
    report = json.load(open(tmp_path / "o" / "report.json"))
    assert report["warnings"]["skipped_inputs"] == [str(pool / "README.txt"), str(pool / "extra.tar.gz")]
