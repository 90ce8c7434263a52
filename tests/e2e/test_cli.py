"""CLI contract: user mistakes are one-line errors with exit code 2, never tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*argv, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "beam_filter.cli", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["run", "--recipe", "nope", "--input", "x/*.tar", "--output", "o"], "neither a file nor a preset"),
    (["run", "--recipe", "datacomp_basic", "--input", "/nonexistent/*.tar", "--output", "o"], "no .tar shards"),
    (["run", "--recipe", "datacomp_basic", "--input", "{pool}/*.tar", "--output", "o", "--bogus-flag", "1"],
     "unknown option --bogus-flag"),
    (["run", "--recipe", "datacomp_basic", "--input", "{pool}/*.tar", "--output", "o",
      "--set", "datacomp_basic.min_side=abc"], "not a valid int"),
    (["run", "--recipe", "datacomp_basic", "--input", "{pool}/*.tar", "--output", "o",
      "--set", "nostage.x=1"], "no stage 'nostage'"),
    (["run", "--recipe", "datacomp_basic", "--input", "{pool}/*.tar", "--output", "o",
      "--set", "datacomp_basic.colour=1"], "unknown parameter"),
    (["run", "--recipe", "{badrecipe}", "--input", "{pool}/*.tar", "--output", "o"], "unknown recipe key"),
    (["run", "--recipe", "datacomp_basic", "--input", "{pool}/*.tar", "--output", "{nonempty}"], "not empty"),
    (["select", "--recipe", "datacomp_basic", "--output", "o"], "exactly one of --scores"),
    (["reshard", "--decisions", "/nonexistent", "--input", "{pool}/*.tar", "--output", "o"], "no decisions"),
])
def test_user_errors_are_one_line(argv, message, pool, tmp_path):
    pool_dir, _ = pool
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  - datacomp_basic: {}\nthreshold: 3\n")
    nonempty = tmp_path / "full"
    nonempty.mkdir()
    (nonempty / "something").write_text("x")
    argv = [a.format(pool=pool_dir, badrecipe=bad, nonempty=nonempty) for a in argv]
    code, out, err = cli(*argv, cwd=tmp_path)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_recipes_lists_presets():
    code, out, err = cli("recipes")
    assert code == 0
    assert "datacomp_basic" in out and "quickstart" in out


def test_overwrite_replaces_output(clean_pool, tmp_path, run_cli):
    # --overwrite replaces only a beam-filter output (marker file) and only beam-filter's own
    # files (tests/faults/test_output_dir.py): a stale file of an earlier run goes.
    pool_dir, _ = clean_pool
    out = tmp_path / "o"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out) == 0
    (out / "thresholds").mkdir(exist_ok=True)
    (out / "thresholds" / "stale.json").write_text("{}")
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out,
                   "--overwrite", "--shard-size", "20") == 0
    assert not (out / "thresholds" / "stale.json").exists()
    assert (out / "uids.npy").exists() and (out / "report.json").exists()


def test_set_override_changes_the_rule(clean_pool, tmp_path, run_cli):
    import json

    pool_dir, _ = clean_pool
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", a) == 0
    assert run_cli("run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", b,
                   "--set", "datacomp_basic.min_side=10") == 0
    ra, rb = (json.load(open(os.path.join(d, "report.json"))) for d in (a, b))
    assert rb["counts"]["kept"] > ra["counts"]["kept"]
    assert "image_too_small" not in rb["reasons"]
    assert ra["recipe"]["hash"] != rb["recipe"]["hash"]


def test_console_exit_flushes_everything_and_keeps_the_code(capsys):
    """`beam-filter` leaves through cli.entry (os._exit after atexit, no interpreter teardown):
    all it printed arrives, and the exit code is main's."""
    from beam_filter.cli import main

    assert main(["recipes", "--show", "devil_details"]) == 0
    in_process = capsys.readouterr().out
    code, out, err = cli("recipes", "--show", "devil_details")
    assert (code, err) == (0, "") and out == in_process and len(out) > 1000
    code, out, err = cli("recipes", "--show", "no_such_preset")
    assert code == 2 and err.startswith("beam-filter: error:") and err.count("\n") == 1


def test_console_exit_does_not_wait_on_an_idle_thread_pool(tmp_path):
    """An executor left open by a command (its workers are non-daemon threads waiting for work)
    is told to stop as at interpreter exit, instead of being joined forever."""
    script = tmp_path / "idle_pool.py"
    script.write_text("from concurrent.futures import ThreadPoolExecutor\n"
                      "ThreadPoolExecutor(2).submit(int).result()\n"
                      "import beam_filter.cli as cli\n"
                      "cli.main = lambda argv=None: 3\n"
                      "cli.entry()\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr


def test_select_scores_with_a_recipe_whose_stage_needs_a_set_value(pool, run_cli, tmp_path):
    """select --scores reads the recipe's stages before building them (for the score run's sources):
    a stage that builds only with a --set value (uid_subset's path) must not fail there."""
    import numpy as np

    pool_dir, _ = pool
    scores, first, second = (str(tmp_path / d) for d in ("scores", "first", "second"))
    assert run_cli("score", "--recipe", "quickstart", "--input", f"{pool_dir}/*.tar", "--output", scores) == 0
    assert run_cli("select", "--recipe", "quickstart", "--scores", scores, "--output", first) == 0
    recipe = tmp_path / "subset.yaml"
    recipe.write_text("name: subset\nstages:\n  - uid_subset: {}\n")
    assert run_cli("select", "--recipe", recipe, "--scores", scores, "--output", second,
                   "--set", f"uid_subset.path={first}/uids.npy") == 0
    assert np.array_equal(np.load(f"{first}/uids.npy"), np.load(f"{second}/uids.npy"))
