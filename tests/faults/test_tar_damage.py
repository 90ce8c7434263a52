"""Damage in the middle of a tar is a file error, never a quiet end of the archive."""

from __future__ import annotations

import io
import tarfile

import pytest

from beam_filter.reading import FileError, read_shard
from beam_filter.tar_io import ShardError, iter_tar_groups

pytestmark = pytest.mark.unit


def _tar(n=30, payload=4000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for i in range(n):
            for ext, data in (("jpg", bytes([i + 1]) * payload), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _header_offset(data: bytes, name: str) -> int:
    return data.index(name.encode())


def _groups(data: bytes):
    keys, error = [], None
    try:
        for key, _ in iter_tar_groups(io.BytesIO(data)):
            keys.append(key)
    except ShardError as e:
        error = e
    return keys, error


def test_an_intact_tar_reads_every_sample_and_no_error():
    keys, error = _groups(_tar())
    assert len(keys) == 30 and error is None


@pytest.mark.parametrize("damage", ["flip", "zero"])
def test_a_damaged_header_with_much_data_after_it_is_reported(damage):
    data = bytearray(_tar(n=40, payload=8000))       # > 64 KiB after the damage
    at = _header_offset(data, "00005.jpg")
    if damage == "flip":
        data[at] ^= 0x01                              # checksum no longer matches
    else:
        data[at:at + 512] = bytes(512)                # a zero block: looks like the end marker
    keys, error = _groups(bytes(data))
    assert keys == [f"{i:05d}" for i in range(4)]     # 00004 may have lost members: not yielded
    assert error is not None and error.kind == "damaged_tar" and error.partial_key == "00004"


def test_damage_becomes_rows_and_a_file_error(tmp_path):
    data = bytearray(_tar(n=40, payload=8000))
    data[_header_offset(data, "00010.txt")] ^= 0x20
    path = tmp_path / "00000000.tar"
    path.write_bytes(bytes(data))
    items = list(read_shard(str(path)))
    errors = [i for i in items if isinstance(i, FileError)]
    rows = [i for i in items if not isinstance(i, FileError)]
    assert [e.error for e in errors] == ["damaged_tar"]
    assert len(rows) == 11 and rows[-1].key == "00010" and rows[-1].error == "truncated_shard"


def test_bytes_after_the_end_marker_keep_every_sample_and_are_noted():
    keys, error = _groups(_tar() + b"appended junk" * 100)
    assert len(keys) == 30
    assert error is not None and error.kind == "trailing_data" and error.partial_key is None


def test_a_file_cut_between_members_is_truncated():
    data = _tar()
    cut = _header_offset(data, "00007.jpg")
    keys, error = _groups(data[:cut])
    assert keys == [f"{i:05d}" for i in range(6)] and error.kind == "truncated_tar"
