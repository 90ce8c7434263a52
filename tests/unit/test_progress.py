"""ProgressMonitor and count_parquet_dir on a real directory where parquet files appear."""

from __future__ import annotations

import io
import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from beam_filter.progress import ParquetDirCounter, ProgressMonitor, count_parquet_dir, format_line


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _write(directory, name: str, rows: int) -> None:
    pq.write_table(pa.table({"uid": [f"{i:032x}" for i in range(rows)]}), os.path.join(directory, name))


def test_count_parquet_dir_reads_footers_and_skips_temp_files(tmp_path):
    d = str(tmp_path / "scores")
    assert count_parquet_dir(d) == (0, 0)          # not there yet
    os.makedirs(d)
    _write(d, "00000000.parquet", 7)
    _write(d, "00000001.parquet", 5)
    _write(d, ".tmp-123-00000002.parquet", 9)        # being written: not counted
    with open(os.path.join(d, "00000003.parquet"), "wb") as f:
        f.write(b"PAR1 half written")                 # unreadable: not counted
    (tmp_path / "scores" / "notes.txt").write_text("x")
    assert count_parquet_dir(d) == (2, 12)


def test_counter_caches_and_sees_replaced_files(tmp_path):
    d = str(tmp_path)
    counter = ParquetDirCounter(d)
    _write(d, "a.parquet", 3)
    assert counter() == (1, 3)
    _write(d, "a.parquet", 30)                        # a retried bundle rewrote it
    os.utime(os.path.join(d, "a.parquet"), ns=(1, 10**18))
    assert counter() == (1, 30)
    os.remove(os.path.join(d, "a.parquet"))
    assert counter() == (0, 0)


def test_format_line():
    assert format_line("score", 0, 10, 0, 1.0) == "score: 0/10 shards (0%) · 0 samples · 0.0 samples/s · ETA --"
    assert format_line("score", 5, 10, 5000, 100.0) == \
        "score: 5/10 shards (50%) · 5,000 samples · 50.0 samples/s · ETA 1m40s"
    assert format_line("score", 10, 10, 10000, 3700.0).endswith("done in 1h01m")


def test_monitor_updates_one_line_on_a_tty_as_files_appear(tmp_path):
    d = str(tmp_path)
    stream = FakeTTY()
    counter = ParquetDirCounter(d)

    def produce():
        for i in range(3):
            time.sleep(0.12)
            _write(d, f"{i:08d}.parquet", 100)

    writer = threading.Thread(target=produce)
    with ProgressMonitor(total=3, count_fn=counter, stream=stream, interval=0.05, label="score"):
        writer.start()
        writer.join()
        time.sleep(0.15)
    out = stream.getvalue()
    frames = out.split("\r")[1:]
    assert len(frames) >= 3
    assert out.count("\n") == 1 and out.endswith("\n")      # one line, ended once
    assert "score: 0/3 shards" in out or "score: 1/3 shards" in out
    assert frames[-1].startswith("score: 3/3 shards (100%) · 300 samples") and "done in" in frames[-1]
    assert any("ETA" in f for f in frames[:-1])


def test_monitor_is_quiet_off_a_terminal_unless_forced(tmp_path):
    quiet = io.StringIO()
    with ProgressMonitor(total=2, count_fn=lambda: (1, 10), stream=quiet, interval=0.01):
        time.sleep(0.05)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with ProgressMonitor(total=2, count_fn=lambda: (2, 10), stream=loud, interval=0.01, force=True):
        time.sleep(0.05)
    lines = loud.getvalue().splitlines()
    assert lines and "\r" not in loud.getvalue()
    assert lines[-1].startswith("score: 2/2 shards (100%) · 10 samples")


def test_monitor_survives_a_failing_count_fn():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] % 2:
            raise OSError("transient")
        return 1, 5

    stream = FakeTTY()
    with ProgressMonitor(total=4, count_fn=flaky, stream=stream, interval=0.01):
        time.sleep(0.08)
    assert "1/4 shards" in stream.getvalue()
