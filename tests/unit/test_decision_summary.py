"""finalize.decision_summary folds decisions with Arrow and numpy: its counters and uid array must
be exactly what a plain loop over the rows gives (the definition below), on real parquet files with
nulls, added-back rows, warnings, copies, shared uids, empty and all-dropped files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_filter import records as R
from beam_filter.addback import is_added_back
from beam_filter.finalize import decision_summary
from beam_filter.uids import UID_DTYPE, uid_to_pair


def _loop_summary(files):
    """The definition: one Python step per row (what finalize did before it was vectorised)."""
    counts, reasons, by_stage, kept_pairs, distinct = Counter(), Counter(), Counter(), [], []
    for path in files:
        table = pq.read_table(path)
        cols = table.to_pydict()
        if R.WARNING in cols:
            counts.update(f"warning:{w}" for w in cols[R.WARNING] if w)
        for uid, kept, copies, reason, stage in zip(cols[R.UID], cols[R.KEPT], cols[R.COPIES],
                                                   cols[R.REASON], cols[R.STAGE]):
            counts["samples"] += 1
            if kept:
                counts["kept"] += 1
                if is_added_back(reason):
                    counts[reason] += 1
                    by_stage[stage] += 1
                counts["kept_with_copies"] += copies
                kept_pairs += [uid_to_pair(uid)] * copies
                distinct.append(uid_to_pair(uid))
            else:
                counts["dropped"] += 1
                reasons[reason] += 1
                by_stage[stage] += 1
    shared = Counter(distinct)
    counts["duplicate_uids"] = sum(n for n in shared.values() if n > 1)
    arr = np.array(sorted(kept_pairs), dtype=np.uint64).reshape(-1, 2)
    out = np.empty(len(arr), dtype=UID_DTYPE)
    out["f0"], out["f1"] = arr[:, 0], arr[:, 1]
    return counts, reasons, by_stage, out


def _write(path, rng, n, with_warning, all_dropped=False, shared_uids=()):
    uids = ["%032x" % int(rng.integers(0, 2 ** 62)) for _ in range(n)]
    for i, u in enumerate(shared_uids):
        if i < n:
            uids[i] = u
    if n > 3:
        uids[1] = uids[1][-12:].upper()            # short, uppercase: left-padded like DataComp
    kept = [None if rng.random() < 0.05 else (False if all_dropped else bool(rng.random() < 0.6)) for _ in range(n)]
    for i in range(min(len(shared_uids), n)):
        kept[i] = True                              # kept in two files: one uid, two kept samples
    reasons = rng.choice(np.array(["caption_too_short", "near_duplicate_of:ab12", "added_back:keep_good",
                                   "below_threshold", ""], dtype=object), size=n).tolist()
    reasons = [None if rng.random() < 0.1 else r for r in reasons]
    stages = [None if rng.random() < 0.05 else s
              for s in rng.choice(np.array(["basic", "clip", "dedup"], dtype=object), size=n).tolist()]
    cols = {R.UID: pa.array(uids, pa.string()), R.KEPT: pa.array(kept, pa.bool_()),
            R.COPIES: pa.array(rng.integers(0, 4, size=n).tolist(), pa.int64()),
            R.REASON: pa.array(reasons, pa.string()), R.STAGE: pa.array(stages, pa.string())}
    if with_warning:
        cols[R.WARNING] = pa.array([rng.choice(["", "repeated_key", "late_json"]) if rng.random() < 0.3
                                    else None for _ in range(n)], pa.string())
    pq.write_table(pa.table(cols), path)
    return str(path)


def test_counters_and_uids_equal_the_row_loop(tmp_path):
    rng = np.random.default_rng(11)
    shared = ["%032x" % 12345, "%032x" % 999]
    files = [_write(tmp_path / "a.parquet", rng, 4000, True, shared_uids=shared),
             _write(tmp_path / "b.parquet", rng, 0, True),
             _write(tmp_path / "c.parquet", rng, 2500, False, shared_uids=shared),
             _write(tmp_path / "d.parquet", rng, 300, True, all_dropped=True),
             _write(tmp_path / "e.parquet", rng, 1, False)]
    got = decision_summary(files)
    want = _loop_summary(files)
    for g, w in zip(got[:3], want[:3]):
        assert dict(g) == dict(w)
        assert all(type(v) is int for v in g.values())       # json.dumps of report.json needs ints
    assert got[0]["duplicate_uids"] > 0 and got[0]["added_back:keep_good"] > 0
    assert any(k.startswith("warning:") for k in got[0]) and "warning:" not in got[0]
    assert got[3].dtype == UID_DTYPE and got[3].tobytes() == want[3].tobytes()


def test_nothing_kept_and_no_files():
    counts, reasons, by_stage, arr = decision_summary([])
    assert dict(counts) == {"duplicate_uids": 0} and not reasons and not by_stage
    assert arr.dtype == UID_DTYPE and len(arr) == 0


def test_only_dropped_rows(tmp_path):
    rng = np.random.default_rng(3)
    files = [_write(tmp_path / "d.parquet", rng, 200, False, all_dropped=True)]
    got, want = decision_summary(files), _loop_summary(files)
    assert [dict(c) for c in got[:3]] == [dict(c) for c in want[:3]] and "kept" not in got[0]
    assert len(got[3]) == 0
