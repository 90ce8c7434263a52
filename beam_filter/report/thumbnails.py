"""Small JPEG thumbnails of chosen samples, read back from their source shards.

The report shows a few dozen samples, spread over possibly many 1 GB shards,
so each shard is opened once, its tar headers are walked (seeking over member
data where the file allows it, streaming where it does not), only the wanted
members are read, and the walk stops as soon as every wanted key was found.
A missing, damaged or undecodable shard or image gives a placeholder reason
instead of a thumbnail: the report never fails because a source moved.

Thumbnails are deterministic for a given Pillow version: fixed size, quality,
no EXIF, baseline (non-progressive) JPEG.
"""

from __future__ import annotations

import base64
import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from PIL import Image

from beam_filter import fsio
from beam_filter.rules.image_header import probe_image
from beam_filter.tar_io import IMAGE_EXTS, ShardError, iter_tar_groups, split_member_name

THUMB_PX = 96
JPEG_QUALITY = 80
_MAX_PIXELS = 64_000_000   # refuse to decode absurd images (decompression bombs)


class Thumb(tuple):
    """``(data_uri or None, note)``: note says why there is no image, or "" when there is one."""

    @property
    def uri(self) -> str | None:
        return self[0]

    @property
    def note(self) -> str:
        return self[1]


def make_thumbnail(data: bytes, size: int = THUMB_PX, boxes: str | None = None) -> bytes:
    """Encoded image bytes -> a baseline JPEG fitting in ``size`` x ``size`` (aspect kept).

    ``boxes``: text polygons in the image's pixel frame (``rules/ocr.encode_boxes``), outlined
    in red on the thumbnail."""
    probe = probe_image(data)      # header first: Pillow warns about a bomb as soon as it opens it
    if probe.width and probe.height and probe.width * probe.height > _MAX_PIXELS:
        raise ValueError(f"image too large to preview ({probe.width}x{probe.height})")
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > _MAX_PIXELS:
            raise ValueError(f"image too large to preview ({img.width}x{img.height})")
        full_w, full_h = img.size
        img.draft("RGB", (size * 2, size * 2))   # JPEG: decode at a reduced scale, much faster
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        else:
            im = img.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
        if boxes:
            _draw_boxes(im, boxes, im.width / full_w, im.height / full_h)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
        return out.getvalue()


def _draw_boxes(im, boxes: str, sx: float, sy: float) -> None:
    """Outline each polygon of ``boxes`` (full-size pixel frame) on ``im``, scaled by (sx, sy)."""
    from PIL import ImageDraw

    from beam_filter.rules.ocr import decode_boxes

    try:
        polys = decode_boxes(boxes)
    except ValueError:      # not our encoding: show the image without boxes
        return
    draw = ImageDraw.Draw(im)
    for poly in polys:
        pts = [(float(x) * sx, float(y) * sy) for x, y in poly]
        draw.polygon(pts, outline=(255, 0, 0), width=1)


def _image_member(members: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in members:
            return members[ext]
    return None


_BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")
_FALLBACK_TYPES = (b"L", b"K", b"x", b"g")   # long names / pax: left to tarfile


class _Fallback(Exception):
    """The fast walker met a header it does not handle; tarfile takes over."""


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:   # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _walk_headers(f, keys: set[str], found: dict[str, dict[str, bytes]]) -> str:
    """Read only the wanted image members of a *seekable* plain ustar/GNU tar.

    tarfile builds a TarInfo per member (~50 us each); a 30k-member shard is
    then ~1.5 s of header parsing. This walks the 512-byte headers directly and
    seeks over member data (~3 us per member). It raises :class:`_Fallback` on
    pax or GNU long-name headers, which tarfile handles. Returns an error note.
    """
    remaining = set(keys)
    first = True
    while remaining:
        hdr = f.read(_BLOCK)
        if not hdr:
            return "" if not first else "shard is empty"
        if len(hdr) < _BLOCK:
            return "shard cut short"
        if hdr == b"\0" * _BLOCK:
            return ""   # end-of-archive marker
        stored = hdr[148:156]
        try:
            ok = _octal(stored) == sum(hdr[:148]) + 256 + sum(hdr[156:])
        except ValueError:
            ok = False
        if not ok:
            if first:
                return "shard is not a readable tar (bad header)"
            return "shard damaged (bad header)"
        first = False
        typ = hdr[156:157]
        if typ in _FALLBACK_TYPES:
            raise _Fallback()
        try:
            size = _octal(hdr[124:136])
        except ValueError:
            return "shard damaged (bad size)"
        name = hdr[:100].split(b"\0", 1)[0]
        if hdr[257:262] == b"ustar":
            prefix = hdr[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        padded = -(-size // _BLOCK) * _BLOCK
        if b"/" in name:
            key, ext = split_member_name(name.decode("utf-8", "surrogateescape"))
        else:   # the common flat layout: skip os.path work for the 99.9% of members not wanted
            stem, _, ext_b = name.partition(b".")
            key, ext = stem.decode("utf-8", "surrogateescape"), ext_b.decode("utf-8", "surrogateescape").lower()
        if typ in _FILE_TYPES and key in remaining and ext in IMAGE_EXTS:
            data = f.read(size)
            if len(data) != size:
                return "shard cut short"
            found.setdefault(key, {})[ext] = data
            remaining.discard(key)
            f.seek(padded - size, 1)
        else:
            f.seek(padded, 1)
    return ""


def _tarfile_members(f, keys: set[str], found: dict[str, dict[str, bytes]], seekable: bool) -> str:
    try:
        tar = tarfile.open(fileobj=f, mode="r:" if seekable else "r|")
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"shard is not a readable tar ({type(e).__name__})"
    remaining = set(keys) - set(found)
    try:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_member_name(info.name)
            if key not in remaining or ext not in IMAGE_EXTS:
                continue
            member = tar.extractfile(info)
            data = member.read() if member is not None else b""
            if len(data) != info.size:
                return "shard cut short"
            found.setdefault(key, {})[ext] = data
            remaining.discard(key)
            if not remaining:
                break
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"shard damaged ({type(e).__name__})"
    return ""


def read_members(path: str, keys: set[str]) -> tuple[dict[str, dict[str, bytes]], str]:
    """``{key: {ext: image bytes}}`` for the wanted keys of one shard, and an error note ("" if fine).

    Keys found before a damaged point are returned along with the note; a key
    counts as found once one image member of it was read. Keys with a ``#``
    (a key repeated in its shard is renamed ``key#1``... by tar_io.iter_tar_groups)
    are looked up with iter_tar_groups itself, the one place that knows renames.
    """
    found: dict[str, dict[str, bytes]] = {}
    renamed = {k for k in keys if "#" in k}
    note = _read_plain(path, keys - renamed, found) if keys - renamed else ""
    if renamed:
        note = _read_renamed(path, renamed, found) or note
    return found, note


def _read_plain(path: str, keys: set[str], found: dict[str, dict[str, bytes]]) -> str:
    def read(f) -> str:
        seekable = bool(getattr(f, "seekable", lambda: False)())
        if seekable:
            try:
                return _walk_headers(f, keys, found)
            except _Fallback:
                f.seek(0)
        return _tarfile_members(f, keys, found, seekable)

    return _with_shard(path, read)


def _read_renamed(path: str, keys: set[str], found: dict[str, dict[str, bytes]]) -> str:
    def read(f) -> str:
        for key, members in iter_tar_groups(f, wanted=keys):
            images = {ext.lower(): data for ext, data in reversed(members.items())
                      if ext.lower() in IMAGE_EXTS}     # reversed: the first of each wins
            if images:
                found[key] = images
        return ""

    return _with_shard(path, read)


def _with_shard(path: str, read) -> str:
    """``read(open shard)``, with what went wrong as the note a thumbnail shows instead."""
    try:
        f = fsio.open_read(path)
    except Exception as e:  # missing, permission, transient remote error
        return f"shard unavailable ({type(e).__name__})"
    with f:
        try:
            return read(f)
        except ShardError as e:
            return f"shard damaged ({e.kind})"
        except OSError as e:
            return f"shard unreadable ({type(e).__name__})"


def _shard_thumbs(path: str, keys: set[str], size: int, boxes: dict | None = None) -> dict[tuple[str, str], Thumb]:
    members, note = read_members(path, keys)
    out = {}
    for key in sorted(keys):
        image = _image_member(members.get(key, {}))
        if image is None:
            out[(path, key)] = Thumb((None, note or "image not found in shard"))
            continue
        try:
            jpeg = make_thumbnail(image, size, (boxes or {}).get((path, key)))
        except Exception as e:  # any decoder failure is a property of the data, not a bug
            out[(path, key)] = Thumb((None, f"undecodable image ({type(e).__name__})"))
            continue
        out[(path, key)] = Thumb(("data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii"), ""))
    return out


def fetch_thumbnails(wanted: Iterable[tuple[str, str]], size: int = THUMB_PX,
                     workers: int = 8, boxes: dict | None = None) -> dict[tuple[str, str], Thumb]:
    """Thumbnails for ``(shard, key)`` pairs, one pass per shard, shards read in parallel threads.
    ``boxes``: ``(shard, key) -> text_boxes`` string, outlined on those thumbnails."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in wanted:
        if shard is None or key is None:
            continue
        by_shard.setdefault(str(shard), set()).add(str(key))
    out: dict[tuple[str, str], Thumb] = {}
    shards = sorted(by_shard)
    if not shards:
        return out
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(shards)))) as pool:
        for result in pool.map(lambda s: _shard_thumbs(s, by_shard[s], size, boxes), shards):
            out.update(result)
    return out
