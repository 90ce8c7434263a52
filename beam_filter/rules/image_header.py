"""Image size and format from the header bytes alone, without decoding pixels.

The score phase reads millions of images; a full decode costs milliseconds per
image while the header walk below costs microseconds. It also catches the
commonest corruption in web-crawled shards, truncated downloads, by checking
that the file ends with its format's end marker (JPEG EOI, PNG IEND, GIF
trailer, WebP RIFF length). Anything it cannot vouch for is ``corrupt_image``;
a header claiming more than ``MAX_PIXELS`` pixels (a decompression bomb: a
few KB that decode to gigabytes) is ``image_too_large``, whatever follows it.

``probe_image`` never raises: a reader must turn every bad member into a row
with a reason, not a crashed bundle.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

CORRUPT = "corrupt_image"
TOO_LARGE = "image_too_large"
# Pillow's default Image.MAX_IMAGE_PIXELS (its DecompressionBombWarning limit; it refuses
# twice that outright). Not imported from PIL: the reader stays free of the import.
MAX_PIXELS = 89_478_485

# Bytes some writers append after the end marker; they do not make an image unreadable.
_PADDING = b"\x00 \t\r\n\x0b\x0c"

# JPEG start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                          0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers with no length field after them.
_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageProbe(NamedTuple):
    """What the header says: format ("jpeg", "png", "webp", "gif"), size, or an error."""

    format: str | None
    width: int | None
    height: int | None
    error: str | None


def probe_image(data: bytes) -> ImageProbe:
    """Format and (width, height) of an encoded image, or ``error="corrupt_image"``
    (or ``"image_too_large"``, with the size the header claims).

    The format is reported even when the file is corrupt, if its signature was
    recognised (useful in counters). Never raises.
    """
    try:
        if not data:
            return ImageProbe(None, None, None, CORRUPT)
        data = bytes(data) if not isinstance(data, bytes) else data
        if data[:2] == b"\xff\xd8":
            return _probe_jpeg(data)
        if data[:8] == _PNG_SIGNATURE:
            return _probe_png(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _probe_webp(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _probe_gif(data)
        return ImageProbe(None, None, None, CORRUPT)
    except Exception:  # noqa: BLE001 - a header parser must never take a worker down
        return ImageProbe(None, None, None, CORRUPT)


def _ends_with(data: bytes, marker: bytes) -> bool:
    """``data`` ends with ``marker``, ignoring trailing padding, without copying the whole file."""
    tail = data[-4096:].rstrip(_PADDING)
    if not tail and len(data) > 4096:
        tail = data.rstrip(_PADDING)           # more than 4 KB of padding: rare, pay the copy
    return tail.endswith(marker)


def _ok(fmt: str, width: int, height: int) -> ImageProbe:
    if width <= 0 or height <= 0:
        return ImageProbe(fmt, None, None, CORRUPT)
    if too_large(width, height):
        return ImageProbe(fmt, width, height, TOO_LARGE)
    return ImageProbe(fmt, width, height, None)


def too_large(width: int, height: int) -> bool:
    """More pixels than any decoder here is allowed to allocate (``MAX_PIXELS``)."""
    return width * height > MAX_PIXELS


def _size_checked(fmt: str, width: int, height: int, complete: bool) -> ImageProbe:
    """A header's size, then the end-marker check: a bomb is too large even when cut short."""
    probe = _ok(fmt, width, height)
    if probe.error is None and not complete:
        return _bad(fmt)
    return probe


def _bad(fmt: str) -> ImageProbe:
    return ImageProbe(fmt, None, None, CORRUPT)


def _probe_jpeg(data: bytes) -> ImageProbe:
    n = len(data)
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return _bad("jpeg")      # segments must start with a marker
        while i < n and data[i] == 0xFF:   # fill bytes before a marker are legal
            i += 1
        if i >= n:
            return _bad("jpeg")
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):   # EOI or start-of-scan before any frame header
            return _bad("jpeg")
        if i + 2 > n:
            return _bad("jpeg")
        length = (data[i] << 8) | data[i + 1]
        if length < 2 or i + length > n:
            return _bad("jpeg")
        if marker in _SOF_MARKERS:
            if length < 7:
                return _bad("jpeg")
            height, width = struct.unpack_from(">HH", data, i + 3)
            # a truncated download has no end-of-image marker
            return _size_checked("jpeg", width, height, _ends_with(data, b"\xff\xd9"))
        i += length
    return _bad("jpeg")


def _probe_png(data: bytes) -> ImageProbe:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return _bad("png")
    width, height = struct.unpack_from(">II", data, 16)
    # IEND's CRC ends in 0x82, never padding
    return _size_checked("png", width, height, _ends_with(data, _PNG_IEND))


def _probe_webp(data: bytes) -> ImageProbe:
    riff_size = struct.unpack_from("<I", data, 4)[0]
    end = riff_size + 8
    complete = not (end > len(data) or riff_size < 4 or data[end:end + 4096].strip(_PADDING) or (
        len(data) - end > 4096 and data[end:].strip(_PADDING)))   # not truncated, no junk after RIFF
    if len(data) < 30:
        return _bad("webp")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        # Key frame: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height.
        if data[23:26] != b"\x9d\x01\x2a":
            return _bad("webp")
        w, h = struct.unpack_from("<HH", data, 26)
        return _size_checked("webp", w & 0x3FFF, h & 0x3FFF, complete)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return _bad("webp")
        bits = struct.unpack_from("<I", data, 21)[0]
        return _size_checked("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, complete)
    if chunk == b"VP8X":
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return _size_checked("webp", w, h, complete)
    return _bad("webp")


def _probe_gif(data: bytes) -> ImageProbe:
    if len(data) < 14:
        return _bad("gif")
    width, height = struct.unpack_from("<HH", data, 6)
    return _size_checked("gif", width, height, _ends_with(data, b"\x3b"))
