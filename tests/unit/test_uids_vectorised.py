"""uids_to_array decodes plain-hex uids in numpy: it must give exactly uid_to_pair of every uid
(random, short, uppercase, padded, odd ones that take the per-uid path) and raise what it raises."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from beam_filter.uids import UID_DTYPE, sort_uids, uid_order, uid_to_pair, uids_to_array


def _reference(uids, sort=True) -> np.ndarray:
    """The per-uid definition: one uid_to_pair each, then numpy's structured sort."""
    arr = np.empty(len(uids), dtype=UID_DTYPE)
    for i, u in enumerate(uids):
        arr[i] = uid_to_pair(u)
    if sort:
        arr.sort(order=["f0", "f1"])
    return arr


def _random_uids(rng, n) -> list[str]:
    out = []
    for _ in range(n):
        length = int(rng.choice([32, 32, 32, 31, 17, 16, 15, 1, 0]))
        digits = "".join(rng.choice(list("0123456789abcdefABCDEF"), size=length))
        out.append(digits)
    return out


# uid_to_pair accepts these (str.strip, int(x, 16) taking "0x", "_" and non-ASCII digits):
# they take the per-uid path and must come out as it gives them.
ODD = ["  " + "ab" * 16 + "\n", "\tff", "0x" + "1" * 30, "1" * 16 + "0x" + "2" * 14, "00ab_cd", " ", "",
       "F" * 32, "0" * 32, "f" * 32, "8000000000000000" + "0" * 16, "\u0661\u0662",   # Arabic-Indic digits
       "abc\u00a0", "ab" * 16 + "\x1c", "ab\n", "ab" * 16 + "\n"]                  # a no-break space; a separator str.strip drops


@pytest.mark.parametrize("sort", [True, False])
def test_equals_uid_to_pair_for_random_and_edge_uids(sort):
    rng = np.random.default_rng(7)
    uids = _random_uids(rng, 5000) + ODD
    uids += [uids[3]] * 3 + [uids[10].upper()]          # repeats and case variants of one uid
    rng.shuffle(uids)
    want = _reference(uids, sort)
    for given in (uids, pa.array(uids), pa.chunked_array([uids[:100], uids[100:]]),
                  pa.array(uids, pa.large_string()), iter(uids)):
        got = uids_to_array(given, sort=sort)
        assert got.dtype == UID_DTYPE
        assert got.tobytes() == want.tobytes()


def test_sliced_arrow_array_reads_its_own_rows():
    uids = ["%032x" % (i * 7919) for i in range(50)] + ["ab"] * 3
    arr = pa.array(uids)[5:40]                      # an offset into the Arrow buffers
    assert uids_to_array(arr, sort=False).tobytes() == _reference(uids[5:40], sort=False).tobytes()


def test_too_long_and_non_hex_raise_as_uid_to_pair_does():
    for bad in ["a" * 33, "xyz", "12 34", "0x12", "+1"]:
        with pytest.raises(ValueError) as want:
            uid_to_pair(bad)
        with pytest.raises(ValueError) as got:
            uids_to_array(["ab", bad, "cd"])
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="longer than 32"):
        uids_to_array(pa.array(["ab", "a" * 40]))
    with pytest.raises(AttributeError):                  # a null uid: uid_to_pair(None) fails the same way
        uids_to_array(pa.array(["ab", None]))


def test_empty_and_non_string_input():
    assert uids_to_array([]).dtype == UID_DTYPE and len(uids_to_array([])) == 0
    assert len(uids_to_array(pa.array([], pa.string()))) == 0
    assert len(uids_to_array(pa.chunked_array([], pa.string()))) == 0
    with pytest.raises(AttributeError):
        uids_to_array([12])                              # not a string: uid_to_pair's own error


def test_sort_matches_structured_sort_with_shared_high_words():
    rng = np.random.default_rng(1)
    arr = np.empty(3000, dtype=UID_DTYPE)
    arr["f0"] = rng.integers(0, 5, size=3000).astype(np.uint64)       # many ties on the high word
    arr["f1"] = rng.integers(0, 2 ** 63, size=3000).astype(np.uint64)
    want = arr.copy()
    want.sort(order=["f0", "f1"])
    assert sort_uids(arr).tobytes() == want.tobytes()
    assert arr[uid_order(arr)].tobytes() == want.tobytes()
    arr["f0"] = np.arange(3000, dtype=np.uint64)[::-1]                 # distinct high words: one argsort
    want = np.sort(arr, order=["f0", "f1"])
    assert sort_uids(arr).tobytes() == want.tobytes()
