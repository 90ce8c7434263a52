"""The output directory: owned by beam-filter, apart from every input, used by one run at a time.

Why this module exists (issue 12, "Trust"): ``--overwrite`` once emptied whatever
directory it was given -- a directory holding the input shards, or one full of a
user's own files -- and two runs on one output interleaved their files. The rules:

* **Ownership.** beam-filter writes a marker file (:data:`MARKER`, a small JSON: tool,
  version, kind, command) into every output it creates or adopts, and it adopts only a
  missing or empty directory. ``--overwrite`` and ``--resume`` touch only a directory
  that carries the marker (or is empty); anything else is a one-line error.
* **Only our own files are deleted.** Even in an owned directory, ``--overwrite`` deletes
  only the names beam-filter writes (:data:`KINDS`: the outputs of a run, or of
  ``make-sample``). A file we did not write is the user's by definition, so a directory
  that holds one is refused as a whole (nothing is deleted) and the message names it;
  the user moves it away. Refusing is simpler to reason about than keeping strays in a
  directory whose other files we replace.
* **No overlap with an input.** An output that contains an input shard, or that equals,
  contains or lies under an input directory (``--scores``/``--metadata``/``--decisions``),
  is refused before anything is deleted. Local paths are compared by realpath (symlinks
  and ``..`` resolved), remote ones by normalised prefix.
* **One run at a time.** A local output is locked with ``fcntl.flock`` on :data:`LOCK`
  for the whole job. The kernel drops a flock when its process dies, kill -9 included,
  so a crashed run never leaves a stale lock to clean up by hand. Object stores
  (gs://, s3://) have no flock, and a lock *object* would outlive a killed run and block
  every later one, so remote outputs are not locked: do not start two runs on one
  gs:// output.
* **Bounded remote calls.** Listing or checking a gs:// path without credentials
  retries for minutes inside the client library; every such call here goes through
  :func:`fsio.remote_call`, which gives it a deadline (``BEAM_FILTER_IO_TIMEOUT_S``,
  default 60 s) and turns a failure into one line naming the path.

The names of a run's files come from :mod:`beam_filter.layout` (:data:`KINDS` is derived
from ``layout.OUTPUT_FILES``); all file access goes through :mod:`beam_filter.fsio`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
from typing import Iterable

from beam_filter import fsio, layout
from beam_filter.errors import UserError
from beam_filter.fsio import is_remote, remote_call

MARKER = layout.MARKER
LOCK = layout.LOCK
OUTPUT, SAMPLE_POOL = "output", "sample_pool"
# What each kind of output writes, as (directory, name patterns); "" is the top level. Every
# directory also may hold .tmp-* files: atomic writes a killed run left behind.
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    OUTPUT: dict(layout.OUTPUT_FILES),
    SAMPLE_POOL: {"": ("*.tar", "*.parquet", "*_stats.json", "ground_truth.json")},
}
# --resume keeps scores/ and embeddings/; everything derived from them is recomputed.
RESUME_CLEARS = tuple(d for d in layout.OUTPUT_FILES if d and d not in layout.RESUME_KEEPS)


# ---- paths ---------------------------------------------------------------------------

def normalize(path: str) -> str:
    """Comparable form: realpath for local paths, collapsed slashes for remote ones."""
    if is_remote(path):
        scheme, rest = str(path).split("://", 1)
        return f"{scheme.lower()}://" + posixpath.normpath("/" + rest).lstrip("/").rstrip("/")
    return os.path.realpath(os.path.expanduser(path))


def is_within(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies under it (both normalised; local and remote never meet)."""
    a, b = normalize(path), normalize(root)
    if is_remote(a) != is_remote(b):
        return False
    return a == b or a.startswith(b.rstrip("/") + "/")


def check_no_overlap(output: str, shards: Iterable[str] = (), input_dirs: Iterable[str] = ()) -> None:
    """Refuse an output that holds an input shard or overlaps an input directory.

    Called before anything is deleted: ``--overwrite`` on such an output would delete
    the job's own input.
    """
    for shard in shards:
        if is_within(shard, output):
            raise UserError(f"--output {output} contains the input shard {shard}; "
                            "write the output to a directory apart from the inputs")
    for d in input_dirs:
        if d and (is_within(output, d) or is_within(d, output)):
            raise UserError(f"--output {output} overlaps the input directory {d}; "
                            "write the output to a directory apart from the inputs")


# ---- listing -------------------------------------------------------------------------

def list_entries(output: str) -> list[str]:
    """Relative paths of everything under ``output``. A directory beam-filter does not write
    is one entry ending in ``/`` and is not entered; symlinks are entries, never followed."""
    if is_remote(output):
        root = output.rstrip("/")
        found = remote_call(lambda: fsio.match(root + "/**"), output, "cannot list the output")
        return sorted(p[len(root) + 1:] for p in found)
    if not os.path.isdir(output):
        return []
    out = []
    known_dirs = {d for kind in KINDS.values() for d in kind if d}
    for name in sorted(os.listdir(output)):
        path = os.path.join(output, name)
        if os.path.islink(path) or not os.path.isdir(path):
            out.append(name)
        elif name not in known_dirs:
            out.append(name + "/")
        else:
            for sub in sorted(os.listdir(path)):
                full = os.path.join(path, sub)
                is_dir = os.path.isdir(full) and not os.path.islink(full)
                out.append(f"{name}/{sub}" + ("/" if is_dir else ""))
    return out


def _is_known(entry: str, kind: str) -> bool:
    if entry.endswith("/"):
        return False
    directory, _, name = entry.rpartition("/")
    if directory == "" and name in (MARKER, LOCK):
        return True
    patterns = KINDS[kind].get(directory)
    if patterns is None:
        return False
    return any(fnmatch.fnmatchcase(name, p) for p in patterns + (fsio.TMP_PREFIX + "*",))


def read_marker(output: str) -> dict | None:
    """The marker's JSON, ``{}`` when it exists but does not parse, None when absent."""
    path = layout.OutputLayout(output).marker
    present = remote_call(lambda: fsio.exists(path), path) if is_remote(path) else os.path.isfile(path)
    if not present:
        return None
    data = remote_call(lambda: fsio.read_bytes(path), path)
    try:
        value = json.loads(data)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


# ---- preparing an output --------------------------------------------------------------

def prepare_output(output: str, *, overwrite: bool, resume: bool, command: str = "run",
                   kind: str = OUTPUT, shards: Iterable[str] = (), input_dirs: Iterable[str] = ()) -> "OutputLock":
    """Make ``output`` ready for a job and lock it; returns the lock (release it when done).

    Empty or missing: adopted (marker written). Non-empty: refused unless ``overwrite``
    (delete beam-filter's own files) or ``resume`` (keep scores/ and embeddings/), and
    then only when it carries the marker and holds nothing beam-filter did not write.
    Every refusal is a UserError raised before anything is deleted.
    """
    check_no_overlap(output, shards, input_dirs)
    if not is_remote(output) and os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a directory")
    lock = OutputLock(output)
    try:
        if lock.path and os.path.exists(lock.path):
            lock.acquire()          # a run holding it: "in use", before we look at its files
        _check(output, list_entries(output), overwrite=overwrite, resume=resume, kind=kind)
        if not is_remote(output):
            os.makedirs(output, exist_ok=True)
        lock.acquire()
        entries = list_entries(output)      # again under the lock: what we delete is what we checked
        marker = _check(output, entries, overwrite=overwrite, resume=resume, kind=kind)
        owned = marker.get("kind", OUTPUT) if marker is not None else kind
        if overwrite and not resume:
            _delete(output, [e for e in entries if _is_known(e, owned) and e.split("/")[-1] not in (LOCK,)])
        elif resume:
            _delete(output, [e for e in entries if e.split("/")[0] in RESUME_CLEARS])
        write_marker(output, kind, command)
    except BaseException:
        lock.release()
        raise
    return lock


def _check(output: str, entries: list[str], *, overwrite: bool, resume: bool, kind: str) -> dict | None:
    """Raise the UserError that refuses ``output``; returns its marker (None when empty)."""
    if not [e for e in entries if e not in (MARKER, LOCK)]:
        return None
    flag = "--resume" if resume else "--overwrite" if overwrite else ""
    marker = read_marker(output)
    if marker is None:
        raise UserError(f"--output {output} is not empty and was not created by beam-filter (no {MARKER} "
                        f"file); {flag or 'beam-filter'} only touches beam-filter's own output directories: "
                        "pick an empty or new --output")
    if not flag:
        raise UserError(f"--output {output} is not empty; pass --overwrite to replace it "
                        "or --resume to reuse its scores")
    owned = marker.get("kind", OUTPUT)
    if owned not in KINDS:
        raise UserError(f"--output {output}: {MARKER} names an unknown kind {owned!r}; pick another --output")
    if resume and (owned != OUTPUT or kind != OUTPUT):
        raise UserError(f"--output {output} holds a {owned.replace('_', ' ')}, not the output of a run; "
                        "--resume needs the output of an earlier run or score")
    unknown = [e for e in entries if not _is_known(e, owned)]
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise UserError(f"--output {output} holds {len(unknown)} file(s) beam-filter did not write ({shown}); "
                        f"{flag} never deletes them: move them away or pick another --output")
    return marker


def _delete(output: str, entries: list[str]) -> None:
    if not entries:
        return
    paths = [fsio.join(output, e) for e in entries]
    remote_call(lambda: fsio.delete(*paths), output, "cannot delete old output files")
    if is_remote(output):
        return
    for d in sorted({e.split("/")[0] for e in entries if "/" in e}):
        try:
            os.rmdir(os.path.join(output, d))
        except OSError:
            pass            # not empty (--resume keeps some) or already gone


def remove_work_files(output: str) -> None:
    """Delete the job's work files once it is over: the by-part select's verdict files
    (``layout.VERDICTS``, transforms/group_parts.py), which only its own later passes read, and
    `run`'s scored rows waiting for the select (``layout.WORK_ROWS``, pipeline._score_models_by_shard).
    Ours by name; a killed run's leftovers are removed the same way by --overwrite/--resume."""
    out = layout.OutputLayout(output)
    for found, directory in ((out.verdict_files, out.verdicts_dir), (out.work_rows_files, out.work_rows_dir)):
        paths = remote_call(found, output, "cannot list the work files")
        if paths:
            remote_call(lambda: fsio.delete(*paths), output, "cannot delete the work files")
        if not is_remote(output):
            try:
                os.rmdir(directory)
            except OSError:
                pass            # never made, or not empty (a file we did not write: left alone)


def write_marker(output: str, kind: str, command: str) -> None:
    """Claim ``output`` for beam-filter (see the module docstring)."""
    from beam_filter import __version__

    data = json.dumps({"tool": "beam-filter", "version": __version__, "kind": kind,
                       "command": command}, sort_keys=True).encode() + b"\n"
    path = layout.OutputLayout(output).marker

    def write():
        with fsio.create(path) as f:
            f.write(data)
    remote_call(write, path, "cannot write")


class OutputLock:
    """``flock`` on ``output/.beam_filter.lock`` (local outputs only; see the module docstring).

    The lock file holds the holder's pid while it runs, so a refused run can say who holds
    it, and is emptied on release. The file stays after the run (removing it would race
    with a run about to lock it); the lock is the flock, not the file.
    """

    def __init__(self, output: str):
        self.output = output
        self.path = None if is_remote(output) else layout.OutputLayout(output).lock
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.path is None or self.fd is not None:
            return
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"--output {self.output} is in use by another beam-filter run (pid {pid})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)     # no pid left behind: a finished output's files stay deterministic
            os.close(self.fd)            # closing the only descriptor drops the flock
            self.fd = None
