"""THE file access module: local paths and Beam filesystems (gs://, s3://), one copy of each helper.

Every read, write, listing and existence check beam_filter makes goes through
here. A local path goes straight to the OS; a path with a scheme (``gs://``,
``s3://``...) goes through ``apache_beam.io.filesystems.FileSystems``, imported
only then: importing apache_beam costs ~1.2 s per process, and shard workers
that read and write local files (the local process pool, tests, the plain-loop
benchmark) should not pay it.

* single files: :func:`open_read`, :func:`create`, :func:`exists`, :func:`delete`,
  :func:`replace`, :func:`join`, :func:`read_bytes`, :func:`read_json`;
* listings: :func:`list_dir` / :func:`list_files` (the files of one directory matching
  a name pattern, temporary files skipped) and :func:`match` (a user's glob);
* atomic writes: :class:`AtomicWriter`, :func:`write_bytes_atomic` (a reader never sees
  half a file; the temporary file is removed whatever fails);
* arrays and checksums: :func:`load_npy` (``allow_pickle=False``, one-line errors),
  :func:`file_sha256`;
* deadlines: :func:`remote_call` bounds a remote call made by the launcher (a storage
  client without credentials retries for minutes) and turns its failure into one line.

Files are opened uncompressed everywhere (a ``.tar`` or ``.npy`` is read as is).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import threading
from typing import Any, BinaryIO, Callable, NamedTuple

from beam_filter.errors import UserError

TMP_PREFIX = ".tmp-"        # atomic writes' temporary names; hidden, never listed


def is_remote(path: str) -> bool:
    """True for any path with a scheme (gs://, s3://, ...): handled by Beam FileSystems."""
    return "://" in str(path)


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _uncompressed():
    from apache_beam.io.filesystems import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


# ---- single files ----------------------------------------------------------------------

def open_read(path: str) -> BinaryIO:
    """Open for streaming reads, no decompression (a .tar is read as is).

    A shard of a named source (``/d/00000.tar#cc12m``, sources.py) is read from its own path."""
    if "#" in path:
        from beam_filter.sources import untag

        path = untag(path)
    if not is_remote(path):
        return open(path, "rb")
    return _fs().open(path, compression_type=_uncompressed())


def create(path: str) -> BinaryIO:
    """Open for writing (truncating); a local parent directory is created when missing."""
    if not is_remote(path):
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        return open(path, "wb")
    return _fs().create(path, compression_type=_uncompressed())


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_remote(path) else _fs().exists(path)


def delete(*paths: str) -> None:
    """Delete files (remote ones in one batch call)."""
    if not paths:
        return
    if is_remote(paths[0]):
        _fs().delete(list(paths))
        return
    for p in paths:
        os.remove(p)


def replace(src: str, dst: str) -> None:
    """Move ``src`` over ``dst`` (atomic locally; copy+delete on object stores)."""
    if not is_remote(dst):
        os.replace(src, dst)
        return
    fs = _fs()
    if fs.exists(dst):
        fs.delete([dst])
    fs.rename([src], [dst])


def join(base: str, *parts: str) -> str:
    """``os.path.join`` locally; ``base/part`` for remote paths (as Beam's GCS and S3 filesystems join)."""
    if not is_remote(base):
        return os.path.join(base, *parts)
    path = base
    for p in parts:
        path = path.rstrip("/") + "/" + p.lstrip("/")
    return path


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


# ---- listings --------------------------------------------------------------------------

class FileInfo(NamedTuple):
    path: str
    size: int
    mtime: float | None     # seconds; None where a filesystem does not say


def list_dir(directory: str, pattern: str = "*") -> list[FileInfo]:
    """The files directly in ``directory`` whose name matches ``pattern`` (fnmatch), sorted by path.

    Hidden names (``.tmp-*`` left by atomic writes, the output's marker and lock) are
    skipped: they are never data. A missing directory lists as empty.
    """
    if is_remote(directory):
        found = _fs().match([join(directory, pattern)])[0].metadata_list
        out = [FileInfo(m.path, m.size_in_bytes, getattr(m, "last_updated_in_seconds", None))
               for m in found if not m.path.rstrip("/").rsplit("/", 1)[-1].startswith(".")]
        return sorted(out)
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for ent in entries:
        if ent.name.startswith(".") or not fnmatch.fnmatchcase(ent.name, pattern):
            continue
        try:
            if not ent.is_file():
                continue
            st = ent.stat()
        except FileNotFoundError:       # removed while listing (an atomic rename's temp name)
            continue
        out.append(FileInfo(os.path.join(directory, ent.name), st.st_size, st.st_mtime))
    return sorted(out)


def list_files(directory: str, pattern: str = "*") -> list[str]:
    """Sorted paths of :func:`list_dir`."""
    return [f.path for f in list_dir(directory, pattern)]


def match(pattern: str) -> list[str]:
    """Sorted paths matching a user's glob (``--input``, a model directory's ``/**``).

    Beam's glob rules on every filesystem, local included (``*`` stays within one
    path segment, ``**`` crosses them), so a glob means the same on a laptop and on
    gs://. This imports Beam: it is for the launcher, not for shard workers.
    """
    return sorted(m.path for m in _fs().match([pattern])[0].metadata_list)


# ---- atomic writes -----------------------------------------------------------------------

class AtomicWriter:
    """Write a file under a temporary name and rename it into place on success.

    A reader never sees a half-written shard or parquet file, and a retried
    bundle simply rewrites the same bytes (Dataflow retries are idempotent).
    Works for local paths and Beam filesystems (gs:// rename is copy+delete).
    """

    def __init__(self, path: str):
        self.path = path
        self.tmp = _tmp_name(path)
        self._f = None

    def __enter__(self) -> BinaryIO:
        self._f = create(self.tmp)
        return self._f

    def __exit__(self, exc_type, exc, tb) -> None:
        # close() flushes, so it can fail too (ENOSPC, EIO, a remote upload):
        # whatever fails, the temporary file is removed and the error propagates.
        try:
            self._f.close()
        except BaseException:
            self._discard()
            if exc_type is None:
                raise
            return                          # the first error (from the with-block) propagates
        if exc_type is not None:
            self._discard()
            return
        try:
            replace(self.tmp, self.path)
        except BaseException:
            self._discard()
            raise

    def _discard(self) -> None:
        try:
            delete(self.tmp)
        except Exception:  # best effort: the temp name is never read
            pass


def write_bytes_atomic(path: str, data: bytes) -> None:
    with AtomicWriter(path) as f:
        f.write(data)


def _tmp_name(path: str) -> str:
    parent, base = os.path.split(path)
    return (os.path.join(parent, f"{TMP_PREFIX}{os.getpid()}-{id(path) & 0xffff:x}-{base}") if parent
            else f"{TMP_PREFIX}{base}")


# ---- arrays and checksums ------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str, what: str = "array", *, expected: str | None = None, mmap: bool = False,
             raw_dtype=None):
    """``np.load(path, allow_pickle=False)`` of a local or remote ``.npy``, with one-line errors.

    ``what`` names the file in the messages: a missing file is
    ``UserError("<what> file not found: <path>")``, and a file that is not a plain
    ``.npy`` (another format, truncated, empty, pickled Python objects) is
    ``UserError("<path>: not <expected>: <numpy's first line>")``; numpy's own message
    does not say which file it was about. ``mmap``: memory-map a local file instead
    of reading it. ``raw_dtype``: a file without the ``.npy`` header is read as raw
    records of that dtype (DataComp's uid subsets may be plain memmaps). Other I/O
    failures (permissions, a storage error) propagate as they are.
    """
    import io

    import numpy as np

    if not exists(path):
        raise UserError(f"{what} file not found: {path}")
    try:
        if is_remote(path):
            data = read_bytes(path)
            if raw_dtype is not None and data[:6] != NPY_MAGIC:
                return np.frombuffer(data, dtype=raw_dtype)
            return np.load(io.BytesIO(data), allow_pickle=False)
        if raw_dtype is not None:
            with open(path, "rb") as f:
                if f.read(6) != NPY_MAGIC:
                    return np.memmap(path, dtype=raw_dtype, mode="r")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, IsADirectoryError) as e:      # other OSErrors are I/O failures
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not {expected or f'a .npy file of {what} (np.save, no Python objects)'}: "
                        f"{detail}") from None


def file_sha256(path: str, limit: int | None = None) -> str:
    """sha256 of a file's bytes (the first ``limit`` bytes or a bit more when given), for provenance."""
    h = hashlib.sha256()
    with open_read(path) as f:
        read = 0
        while chunk := f.read(1 << 20):
            h.update(chunk)
            read += len(chunk)
            if limit and read >= limit:
                break
    return h.hexdigest()


# ---- deadlines on remote calls ----------------------------------------------------------------

IO_TIMEOUT_ENV = "BEAM_FILTER_IO_TIMEOUT_S"
CREDENTIALS_HINT = "check credentials (gcloud auth application-default login) and network access"


class RemoteIOError(OSError):
    """A remote storage call failed or did not answer in time (exit 1: not a usage mistake)."""


def io_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get(IO_TIMEOUT_ENV, "60")))
    except ValueError:
        raise UserError(f"{IO_TIMEOUT_ENV}={os.environ[IO_TIMEOUT_ENV]!r} is not a number of seconds") from None


def remote_call(fn: Callable[[], Any], path: str, what: str = "cannot access") -> Any:
    """``fn()`` with a deadline when ``path`` is remote; a failure is a one-line RemoteIOError.

    Listing or checking a gs:// path without credentials retries for minutes inside
    the client library. The call runs in a daemon thread: a client stuck retrying
    cannot be interrupted, but it no longer holds the command (or its exit) hostage.
    The deadline is ``BEAM_FILTER_IO_TIMEOUT_S`` (default 60 s). Local paths run
    ``fn`` directly. Meant for the launcher's short calls (listing, checking, reading
    a marker), not for workers' uploads of whole shards.
    """
    if not is_remote(path):
        return fn()
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller below
            box["error"] = e

    limit = io_timeout()
    worker = threading.Thread(target=target, name=f"beam-filter-io {path}", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise RemoteIOError(f"{path}: {what}: no answer within {limit:g} s "
                            f"({IO_TIMEOUT_ENV} changes this); {CREDENTIALS_HINT}")
    if "error" in box:
        e = box["error"]
        if isinstance(e, (UserError, RemoteIOError)):
            raise e
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise RemoteIOError(f"{path}: {what} ({type(e).__name__}{': ' + detail if detail else ''}); "
                            f"{CREDENTIALS_HINT}") from None
    return box.get("value")
