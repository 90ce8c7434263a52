"""Streaming WebDataset tar reading and deterministic tar writing (pure, no Beam).

Reading streams a tar member by member (``tarfile`` stream mode) so a 1 GB shard
never sits in memory, and groups consecutive members by key the way the
``webdataset`` library does (key = member path up to the first dot of its base
name). A shard that is not a tar, or is cut short, ends the stream with a
:class:`ShardError` *after* yielding every complete sample before the damage,
so the caller can record rows for those and a file-level error for the rest.

Member names are kept as they are in the tar (extension case included), so a
writer that names members ``f"{key}.{ext}"`` reproduces them byte for byte.
Three things about a group are settled here, once, so every reader of a shard
(the score phase, the reshard writer, the report) agrees on them:

* a key seen again later in the same shard is renamed ``key#1``, ``key#2``...
  (:class:`_KeyNames`): a sample is identified by (source shard, key), and two
  samples never share one;
* a member whose name would escape the folder it is extracted into, or cannot be
  stored as text (:func:`unsafe_name_reason`), is never read: its group is
  flagged ``unsafe_member_name``;
* non-regular members (symlinks, hard links, devices, fifos, directories named
  like sample members) are never read either, but still form groups, so a key
  made only of them gets a row (``no_regular_members``) instead of vanishing.

Writing uses fixed header fields (mtime 0, uid/gid 0, empty owner names, mode
0644, GNU format) so the same samples give byte-identical tars on every run.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from typing import BinaryIO, Iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Extensions the reader uses; a *directory* named like one of them is taken for a
# (broken) sample member, any other directory entry is a plain folder and skipped.
SAMPLE_EXTS = IMAGE_EXTS + ("txt", "json")
FIXED_MTIME = 0

UNSAFE_MEMBER_NAME = "unsafe_member_name"     # sample reasons set from a group's flags
NO_REGULAR_MEMBERS = "no_regular_members"
DUPLICATE_KEY = "duplicate_key"               # a warning, not a reason: the sample was renamed


class ShardError(Exception):
    """A file-level read failure: ``kind`` is "not_a_tar", "truncated_tar" or "unreadable"."""

    def __init__(self, kind: str, detail: str, partial_key: str | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.partial_key = partial_key   # key of a sample cut off by the damage, if any


def split_member_name(name: str, lower: bool = True) -> tuple[str, str]:
    """``"dir/000001.seg.jpg"`` -> (``"dir/000001"``, ``"seg.jpg"``), as webdataset's base_plus_ext.

    ``lower=False`` keeps the extension as written (what :func:`iter_tar_groups` yields).
    """
    directory, base = os.path.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (os.path.join(directory, stem) if directory else stem), (ext.lower() if lower else ext)


# C0 and C1 control characters (NUL, newline, ESC...), backslashes, and the lone
# surrogates tarfile's surrogateescape leaves for bytes that are not UTF-8.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\\\ud800-\udfff]")
_DRIVE = re.compile("[A-Za-z]:")


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name must not be read or written, or None when it is safe.

    Unsafe: not valid UTF-8 (parquet cannot store it), a control character (NUL,
    newline...), a backslash (a separator on Windows), an absolute path (``/x``,
    ``C:x``) or a ``..`` path component: extracting such a member writes outside
    the folder it is extracted into, or under a name nobody can type.
    """
    m = _UNSAFE_CHARS.search(name)
    if m is not None:
        c = m.group()
        if "\ud800" <= c <= "\udfff":
            return "not_utf8"
        return "backslash" if c == "\\" else "control_character"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute_path"
    if ".." in name and ".." in name.split("/"):
        return "parent_directory"
    return None


def printable_name(name: str) -> str:
    """``name`` as text parquet can store and a person can read, one-to-one.

    Bytes that are not UTF-8 become ``\\xNN``, control characters ``\\xNN``/``\\n``, and a
    backslash is doubled, so two different names never print the same. Safe names
    (:func:`unsafe_name_reason` is None) are returned unchanged.
    """
    if unsafe_name_reason(name) is None:
        return name
    name = name.replace("\\", "\\\\")
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:     # a surrogate no byte decodes to: not from a tar, keep it visible
        raw = name.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class Members(dict):
    """One sample's regular members, ``{ext as written: bytes}``, and what the group says.

    ``source_key``: the key as written in the tar (the yielded key differs when the
    group was renamed, see :attr:`renamed`). ``unsafe``: the
    :func:`unsafe_name_reason` of the first unsafe member name (never read).
    ``irregular``: how many non-regular members (never read) the group had.
    """

    def __init__(self, source_key: str):
        super().__init__()
        self.source_key = source_key
        self.renamed = False
        self.unsafe: str | None = None
        self.irregular = 0
        self.exts: set[str] = set()      # every extension seen, read or not

    @property
    def problem(self) -> str | None:
        """The reason this group can never be a kept sample, or None."""
        if self.unsafe is not None:
            return UNSAFE_MEMBER_NAME
        if self.irregular and not self:
            return NO_REGULAR_MEMBERS
        return None


class _KeyNames:
    """The name each group of a shard is yielded under: its key, or ``key#n`` when taken.

    n counts from 1 per key and skips names already used (a real key ``a#1`` seen
    before, or a rename), so names are unique within the shard and the same on
    every read.
    """

    def __init__(self):
        self.taken: set[str] = set()
        self.next: dict[str, int] = {}

    def claim(self, key: str) -> tuple[str, bool]:
        if key not in self.taken:
            self.taken.add(key)
            return key, False
        n = self.next.get(key, 1)
        while f"{key}#{n}" in self.taken:
            n += 1
        self.next[key] = n + 1
        name = f"{key}#{n}"
        self.taken.add(name)
        return name, True


def _is_sample_member(info: tarfile.TarInfo) -> bool:
    """Regular files, and every non-regular entry except plain folders (webdataset skips those)."""
    if info.isfile():
        return True
    if info.isdir():
        ext = split_member_name(info.name.rstrip("/"))[1]
        return ext.rsplit(".", 1)[-1] in SAMPLE_EXTS
    return True


def iter_tar_groups(fileobj: BinaryIO, wanted: set[str] | None = None) -> Iterator[tuple[str, Members]]:
    """Yield ``(key, Members)`` for each sample, streaming.

    A group is a run of consecutive members with the same key, as in webdataset,
    except that an extension repeated within the run starts a new group (two
    ``a.jpg`` in a row are two samples; the second is renamed). A key seen earlier
    in the shard is yielded as ``key#1``, ``key#2``... (:class:`_KeyNames`), counted
    over every group whether wanted or not, so all readers name samples alike.

    ``wanted``: when given, members of other keys are skipped without reading
    their data (the reshard and report readers need a few keys per shard), and
    groups with a :attr:`Members.problem` are not yielded (they are never kept).
    Raises :class:`ShardError` at the first unreadable point.
    """
    fileobj = _TailTracker(fileobj)
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|", encoding="utf-8", errors="surrogateescape")
    except (tarfile.ReadError, EOFError, OSError) as e:
        raise ShardError("not_a_tar", str(e) or type(e).__name__) from None
    names = _KeyNames()
    key, members = None, None

    def ready():
        return members is not None and (wanted is None or (key in wanted and members.problem is None))

    try:
        for info in tar:
            if not _is_sample_member(info):
                continue
            regular = info.isfile()
            member_name = info.name if regular else info.name.rstrip("/")
            k, ext = split_member_name(member_name, lower=False)
            if members is None or k != members.source_key or ext in members.exts:
                if ready():
                    yield key, members      # complete: a member of another sample follows
                members = Members(k)
                key, members.renamed = names.claim(k)
            members.exts.add(ext)
            unsafe = unsafe_name_reason(member_name)
            if unsafe is not None:
                members.unsafe = members.unsafe or unsafe
                continue                    # never read, never written
            if not regular:
                members.irregular += 1
                continue
            if wanted is not None and key not in wanted:
                continue                    # tarfile skips the data without reading it into memory
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            if len(data) != info.size:
                raise EOFError(f"member {info.name} cut short")
            members[ext] = data
    except (tarfile.ReadError, EOFError, OSError, tarfile.HeaderError) as e:
        raise ShardError("truncated_tar", str(e) or type(e).__name__, partial_key=key) from None
    # tarfile ends the archive quietly at a header cut short, a header it cannot parse (a
    # flipped byte, a zeroed block) or no header at all. A complete tar ends with two zero
    # blocks; anything else means the file was cut or damaged there, and the last sample may
    # have lost members: it is not yielded (it gets a row as the truncated sample).
    trailer = fileobj.trailer(tar.offset)
    if trailer == "cut":
        raise ShardError("truncated_tar", "no end-of-archive marker (file cut short)", partial_key=key)
    if trailer == "damaged":
        raise ShardError("damaged_tar", f"unreadable tar header at byte {tar.offset}; the rest of the "
                         "file cannot be read", partial_key=key)
    if ready():
        yield key, members
    if trailer == "garbage":
        raise ShardError("trailing_data", "bytes after the end-of-archive marker (ignored)")


class _TailTracker:
    """Read-through wrapper that counts bytes and keeps the last few KB (to check the end marker)."""

    KEEP = 1 << 16

    def __init__(self, f):
        self._f = f
        self.total = 0
        self._tail = b""

    def read(self, n=-1):
        data = self._f.read(n)
        self.total += len(data)
        self._tail = (self._tail + data)[-self.KEEP:]
        return data

    def trailer(self, offset: int) -> str:
        """What follows ``offset``, where tarfile stopped reading headers.

        "end": two zero blocks (the end-of-archive marker), then only zeros (record padding);
        "garbage": the marker, then other bytes; "cut": less than two blocks, all zero (the
        file stops between members); "damaged": a header tarfile could not parse. Every byte
        is looked at: a damaged header followed by megabytes of samples must not pass for an
        end of archive.
        """
        ahead = self.total - offset              # bytes tarfile already read past ``offset``
        if ahead > len(self._tail):
            return "damaged"                     # cannot happen with tarfile's small read-ahead
        head = self._tail[len(self._tail) - ahead:] if ahead > 0 else b""
        rest_nonzero = bool(head[1024:].strip(b"\0"))
        head = head[:1024]
        while True:                              # drain what tarfile did not read, checking it
            chunk = self._f.read(1 << 20)
            if not chunk:
                break
            self.total += len(chunk)
            if len(head) < 1024:
                take = 1024 - len(head)
                head, chunk = head + chunk[:take], chunk[take:]
            rest_nonzero = rest_nonzero or bool(chunk.strip(b"\0"))
        if head.strip(b"\0"):
            return "damaged" if len(head) == 1024 else "cut"
        if len(head) < 1024:
            return "cut"
        return "garbage" if rest_nonzero else "end"


def tar_bytes_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))

