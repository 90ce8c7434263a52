"""Columns passed through from Arrow (a metadata part's url, text, ...) write the bytes that the same
values converted from Python objects write (tables.python_typed / rows_to_table(arrow_columns=))."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_filter import tables


def _bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def test_python_typed_matches_pa_array_of_the_python_values():
    columns = {
        "i32": pa.array([1, None, -3], type=pa.int32()),
        "u16": pa.array([1, 2, 3], type=pa.uint16()),
        "f32": pa.array([0.1, float("nan"), None], type=pa.float32()),
        "f64": pa.array([0.25, 1e300, None], type=pa.float64()),
        "s": pa.array(["a", None, "é"], type=pa.large_string()),
        "b": pa.array([True, False, None]),
        "boxes": pa.array([[[0.1, 0.2, 0.5, 0.6]], [], None, [[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]]],
                          type=pa.list_(pa.list_(pa.float32()))),
    }
    for name, arr in columns.items():
        typed = tables.python_typed(pa.chunked_array([arr]))
        expected = pa.array(arr.to_pylist())
        assert typed.type == expected.type, name
        # NaN != NaN in lists: compare as float arrays where numbers (assert_array_equal treats NaN as equal)
        if pa.types.is_floating(expected.type) or name == "boxes":
            np.testing.assert_array_equal(np.array(_flat(typed.to_pylist()), dtype=float),
                                          np.array(_flat(expected.to_pylist()), dtype=float))
        else:
            assert typed.to_pylist() == expected.to_pylist(), name
    # Not a plain cast: left to the Python path.
    assert tables.python_typed(pa.chunked_array([pa.array([None, None], type=pa.int64())])) is None
    assert tables.python_typed(pa.chunked_array([pa.array([[], None], type=pa.list_(pa.float64()))])) is None
    assert tables.python_typed(pa.chunked_array([pa.array([[None]], type=pa.list_(pa.float64()))])) is None


def _flat(values):
    out = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flat(v))
            out.append("|")         # list boundaries count too
        else:
            out.append(v)
    return [float("inf") if v == "|" else v for v in out]


def test_rows_to_table_with_passed_through_columns_writes_the_same_bytes():
    rng = np.random.default_rng(0)
    n = 500
    source = pa.table({"uid": [f"{i:032x}" for i in rng.permutation(n)],
                       "url": [f"http://x/{i}" for i in range(n)],
                       "width": pa.array(rng.integers(1, 2000, n), type=pa.int32()),
                       "score": pa.array(rng.random(n), type=pa.float32())})
    rows = source.to_pylist()
    for r in rows:
        r.update(key=r["uid"], kept=bool(r["width"] % 2), reason=None, copies=1)
    plain = tables.rows_to_table(rows)
    passed = {name: tables.python_typed(source.column(name)) for name in ("url", "width", "score")}
    assert _bytes(tables.rows_to_table(rows, arrow_columns=passed)) == _bytes(plain)
    # A column passed through with other values would change the bytes: the comparison can fail.
    wrong = dict(passed, width=pa.array(np.zeros(n, dtype=np.int64)))
    assert _bytes(tables.rows_to_table(rows, arrow_columns=wrong)) != _bytes(plain)
