"""A progress line for long local runs: shards done, samples/s, ETA.

Beam's DirectRunner says nothing while a score phase runs for an hour. The
pipeline writes one ``scores/<shard>.parquet`` per finished source shard
(atomically), so progress can be read from the outside: count those files and
the rows in their footers. :class:`ProgressMonitor` polls a counting function
from a daemon thread and redraws one line (``\\r``) on a terminal. It stays
silent when the stream is not a terminal (logs, CI) unless ``force=True``, in
which case it prints one plain line per update, no more often than ``interval``.

Nothing here touches the pipeline: a failing count function only means a stale
line, never a failed run.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

import pyarrow.parquet as pq

from beam_filter import fsio


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def format_line(label: str, done: int, total: int, samples: int, elapsed: float, unit: str = "shards",
                row_unit: str = "samples") -> str:
    """The progress text (pure, so tests and other front-ends can reuse it)."""
    rate = samples / elapsed if elapsed > 0 else 0.0
    parts = [f"{label}: {done:,}/{total:,} {unit}"]
    if total:
        parts[0] += f" ({100.0 * done / total:.0f}%)"
    parts.append(f"{samples:,} {row_unit}")
    parts.append(f"{rate:,.1f} {row_unit}/s")
    if done >= total > 0:
        parts.append(f"done in {_fmt_duration(elapsed)}")
    elif done > 0:
        parts.append(f"ETA {_fmt_duration(elapsed * (total - done) / done)}")
    else:
        parts.append("ETA --")
    return " · ".join(parts)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressMonitor:
    """Context manager: a daemon thread prints progress every ``interval`` seconds.

    ``count_fn() -> (shards_done, samples_done)`` is called from the thread; it
    should be cheap (see :class:`ParquetDirCounter`). On exit a final line is
    printed (and ended with a newline) so the terminal is left clean.
    """

    def __init__(self, total: int, count_fn: Callable[[], tuple[int, int]], stream: TextIO | None = None,
                 interval: float = 2.0, label: str = "score", force: bool = False, unit: str = "shards",
                 row_unit: str = "samples"):
        self.total = int(total)
        self.count_fn = count_fn
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.label = label
        self.unit, self.row_unit = unit, row_unit
        self.tty = _is_tty(self.stream)
        self.enabled = self.tty or force
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._last = (0, 0)
        self._width = 0

    def __enter__(self) -> "ProgressMonitor":
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name=f"progress-{self.label}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.interval, 1.0) + 5.0)
        if self.enabled:
            self._emit(final=True)

    def poll(self) -> tuple[int, int]:
        """Call the count function; keep the last good value when it fails."""
        try:
            done, samples = self.count_fn()
            self._last = (int(done), int(samples))
        except Exception:  # a half-written file, a transient remote error: show the last value
            pass
        return self._last

    def line(self) -> str:
        done, samples = self.poll()
        return format_line(self.label, done, self.total, samples, time.monotonic() - self._start,
                           self.unit, self.row_unit)

    def _emit(self, final: bool = False) -> None:
        text = self.line()
        try:
            if self.tty:
                pad = " " * max(self._width - len(text), 0)   # erase the end of a longer previous line
                self._width = len(text)
                self.stream.write("\r" + text + pad + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (ValueError, OSError):  # stream closed under us (interpreter shutdown)
            self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit()


class ParquetDirCounter:
    """``() -> (files, rows)`` over ``directory/*.parquet``, reading each footer once.

    Files are cached by (path, size, mtime), so polling a directory of 10,000
    finished shards every 2 s reads only the footers of new files. Hidden and
    temporary files (``.tmp-...``) are skipped: the pipeline writes them
    atomically, so a visible file is complete.
    """

    def __init__(self, directory: str, pattern_suffix: str = ".parquet"):
        self.directory = directory
        self.suffix = pattern_suffix
        self._cache: dict[str, tuple[tuple, int]] = {}

    def __call__(self) -> tuple[int, int]:
        files = rows = 0
        seen = set()
        for info in fsio.list_dir(self.directory, "*" + self.suffix):
            sig = (info.size, info.mtime)
            cached = self._cache.get(info.path)
            if cached is None or cached[0] != sig:
                try:
                    n = _footer_rows(info.path)
                except Exception:  # not (yet) a valid parquet file: count it next time
                    continue
                cached = self._cache[info.path] = (sig, n)
            seen.add(info.path)
            files += 1
            rows += cached[1]
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return files, rows


def _footer_rows(path: str) -> int:
    if fsio.is_remote(path):
        with fsio.open_read(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    return pq.read_metadata(path).num_rows


def count_parquet_dir(directory: str) -> tuple[int, int]:
    """(number of parquet files, total rows) in ``directory``, from footers only."""
    return ParquetDirCounter(directory)()
