"""The output directory is beam-filter's own (issue 12, "Trust", cases 1, 2 and 6).

--overwrite / --resume touch only a directory beam-filter created (marker file), delete only
what beam-filter writes, never an output that holds or overlaps an input; one run at a time
per output (flock); a killed run leaves no pool workers behind and no stale lock.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


MARKER = ".beam_filter_output"


@pytest.fixture
def in_process(run_cli, capsys):
    """``in_process(*argv) -> (code, "", stderr)``: the CLI in this process (refusals come before
    Beam starts: no subprocess needed)."""
    def run(*argv):
        capsys.readouterr()
        code = run_cli(*argv)
        return code, "", capsys.readouterr().err
    return run


def one_line_error(code, err, expected_code=2):
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def tree(directory) -> dict[str, bytes]:
    out = {}
    for p in glob.glob(os.path.join(str(directory), "**", "*"), recursive=True) + \
            glob.glob(os.path.join(str(directory), "**", ".*"), recursive=True):
        if os.path.isfile(p) and os.path.basename(p) != ".beam_filter.lock":   # holds the last pid
            out[os.path.relpath(p, directory)] = open(p, "rb").read()
    return out


def run_args(pool_dir, out, *extra):
    return ["run", "--recipe", "datacomp_basic", "--input", f"{pool_dir}/*.tar", "--output", out, *extra]


# ---- case 1: ownership, own files only, inputs ----------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_output_holding_the_input_shards_is_refused(clean_pool, tmp_path, flag, in_process):
    pool_dir, _ = clean_pool
    pool = tmp_path / "pool"
    shutil.copytree(pool_dir, pool)
    before = tree(pool)
    for out in (pool, tmp_path):                     # the shards' dir, and a dir above it
        code, _, err = in_process(*run_args(pool, out, flag))
        line = one_line_error(code, err)
        assert f"--output {out} contains the input shard" in line
    assert tree(pool) == before


@pytest.mark.e2e
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_directory_not_created_by_beam_filter_is_not_touched(clean_pool, tmp_path, flag, in_process):
    pool_dir, _ = clean_pool
    out = tmp_path / "mine"
    (out / "shards").mkdir(parents=True)
    (out / "decisions").mkdir()
    (out / "shards" / "important.tar").write_bytes(b"precious")
    (out / "decisions" / "notes.txt").write_text("notes")
    (out / "report.json").write_text("{}")           # even names beam-filter would write
    before = tree(out)
    code, _, err = in_process(*run_args(pool_dir, out, flag))
    line = one_line_error(code, err)
    assert f"--output {out} is not empty and was not created by beam-filter" in line and flag in line
    assert tree(out) == before


@pytest.mark.e2e
def test_overwrite_deletes_only_beam_filter_files(clean_pool, tmp_path, capsys, run_cli, in_process):
    pool_dir, _ = clean_pool
    out = tmp_path / "out"
    assert run_cli(*run_args(pool_dir, out)) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "beam-filter" and marker["command"] == "run" and marker["version"]
    capsys.readouterr()
    assert run_cli(*run_args(pool_dir, out)) == 2          # its own output, but no flag
    assert f"--output {out} is not empty; pass --overwrite" in one_line_error(2, capsys.readouterr().err)
    (out / "notes.txt").write_text("mine")
    (out / "decisions" / "notes.txt").write_text("mine too")
    before = tree(out)
    code, _, err = in_process(*run_args(pool_dir, out, "--overwrite"))
    line = one_line_error(code, err)
    assert "holds 2 file(s) beam-filter did not write" in line
    assert "decisions/notes.txt" in line and "notes.txt" in line
    assert tree(out) == before                      # refused as a whole: nothing deleted

    os.remove(out / "notes.txt")
    os.remove(out / "decisions" / "notes.txt")
    (out / "report_stale.png").write_bytes(b"old plot")   # a name beam-filter writes: replaced
    assert run_cli(*run_args(pool_dir, out, "--overwrite", "--shard-size", "20")) == 0
    assert not (out / "report_stale.png").exists()
    assert (out / MARKER).exists() and (out / "uids.npy").exists()


@pytest.mark.e2e
def test_output_overlapping_an_input_directory_is_refused(clean_pool, tmp_path, run_cli, in_process):
    pool_dir, _ = clean_pool
    ran = tmp_path / "ran"
    assert run_cli(*run_args(pool_dir, ran)) == 0
    before = tree(ran)
    for out in (ran, ran / "sub", tmp_path):
        code, _, err = in_process("select", "--recipe", "datacomp_basic", "--scores", ran,
                                  "--output", out, "--overwrite")
        assert f"--output {out} overlaps the input directory {ran}" in one_line_error(code, err)
    code, _, err = in_process("reshard", "--decisions", ran, "--input", f"{pool_dir}/*.tar",
                              "--output", ran / "resharded")
    assert "overlaps the input directory" in one_line_error(code, err)
    # a symlink to an input directory is the same directory
    link = tmp_path / "link"
    os.symlink(ran, link)
    code, _, err = in_process("select", "--recipe", "datacomp_basic", "--scores", ran,
                              "--output", link, "--overwrite")
    assert "overlaps the input directory" in one_line_error(code, err)
    assert tree(ran) == before


@pytest.mark.unit
def test_remote_paths_overlap_by_normalised_prefix():
    from beam_filter.errors import UserError
    from beam_filter.output_dir import check_no_overlap

    with pytest.raises(UserError, match="contains the input shard"):
        check_no_overlap("gs://bucket/out/", shards=["gs://bucket//out/a/../00000000.tar"])
    with pytest.raises(UserError, match="overlaps the input directory"):
        check_no_overlap("gs://bucket/run/sub", input_dirs=["gs://bucket/run/"])
    with pytest.raises(UserError, match="overlaps the input directory"):
        check_no_overlap("GS://bucket/run", input_dirs=["gs://bucket/run/scores"])
    check_no_overlap("gs://bucket/out2", shards=["gs://bucket/out/00000000.tar"],
                     input_dirs=["gs://bucket/out", "/bucket/out2"])        # prefixes, not paths


@pytest.mark.e2e
def test_make_sample_overwrite_follows_the_same_rule(clean_pool, tmp_path, run_cli, in_process):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "00000000.tar").write_bytes(b"not beam-filter's")
    code, _, err = in_process("make-sample", "--output", mine, "--samples", "20", "--overwrite")
    assert "was not created by beam-filter" in one_line_error(code, err)
    assert (mine / "00000000.tar").read_bytes() == b"not beam-filter's"

    pool = tmp_path / "pool"
    assert run_cli("make-sample", "--output", pool, "--samples", "130") == 0
    assert json.loads((pool / MARKER).read_text())["kind"] == "sample_pool"
    assert run_cli("make-sample", "--output", pool, "--samples", "20", "--overwrite") == 0
    assert [os.path.basename(p) for p in sorted(glob.glob(str(pool / "*.tar")))] == ["00000000.tar"]
    # a sample pool is not a run's output: --resume refuses it
    code, _, err = in_process(*run_args(clean_pool[0], pool, "--resume"))
    assert "--resume needs the output of an earlier run" in one_line_error(code, err)


# ---- cases 2 and 6: one run at a time; a killed run leaves nothing running ----------------

@pytest.fixture(scope="module")
def many_shards(clean_pool, tmp_path_factory):
    """36 shards (the clean pool's 3, copied under new names): a run that lasts seconds."""
    pool_dir, _ = clean_pool
    d = tmp_path_factory.mktemp("many_shards")
    sources = sorted(glob.glob(os.path.join(pool_dir, "*.tar")))
    for i in range(36):
        shutil.copy(sources[i % len(sources)], d / f"{i:08d}.tar")
    return str(d)


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat", "rb").read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            out.setdefault(int(fields[1]), []).append(int(name))
    return out


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _start_run(pool, out):
    return subprocess.Popen([sys.executable, "-m", "beam_filter.cli", *run_args(pool, out, "--no-progress",
                                                                                "--direct_num_workers=2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and /proc")
def test_second_run_on_the_same_output_is_refused(many_shards, tmp_path, capsys, run_cli):
    out = tmp_path / "out"
    first = _start_run(many_shards, out)
    try:
        lock = out / ".beam_filter.lock"
        assert _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 120, first), \
            first.stderr.read() if first.poll() is not None else "first run never took the lock"
        capsys.readouterr()
        code = run_cli(*run_args(many_shards, out, "--overwrite"))
        still_running = first.poll() is None
        err = capsys.readouterr().err
        assert still_running, "the first run ended before the second was tried; use a bigger pool"
        line = one_line_error(code, err)
        assert line == (f"beam-filter: error: --output {out} is in use by another beam-filter run "
                        f"(pid {first.pid})")
        assert first.wait(300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert (out / "report.json").exists()        # the refused --overwrite deleted nothing


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_kill_9_leaves_no_workers_and_no_lock(many_shards, tmp_path, run_cli):
    out = tmp_path / "out"
    proc = _start_run(many_shards, out)
    try:
        def pool_workers():     # the forkserver's children
            kids = _children()
            return [w for server in kids.get(proc.pid, []) for w in kids.get(server, [])]

        assert _wait_for(pool_workers, 120, proc), "no pool worker started"
        family = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(running(p) for p in family):
            time.sleep(0.1)
        assert not [p for p in family if running(p)], "processes of the killed run still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the kernel dropped the lock with the process: the next run may replace the partial output
    assert run_cli(*run_args(many_shards, out, "--overwrite")) == 0
