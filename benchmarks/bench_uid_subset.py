"""uid_subset with a DFN-scale subset file (20M uids): load time, memory, lookups per second.

DFN's released subset files hold tens of millions of uids (datacomp_medium_dfn_20m_inds.npy:
about 19.2M). This writes a sorted ``u8,u8`` file of ``--uids`` random uids (the DataComp
format, ``uids.save_uids``), then measures, in this process:

* ``load_s`` and ``rss_mb``: ``uids.load_uids`` + ``UidSet`` (what the uid_subset stage
  loads once per worker process), and the resident memory it adds;
* ``lookups_per_s``: ``UidSet.count`` (the stage's per-row test, copies included) on
  ``--lookups`` uid strings, half of them listed, one at a time as rows arrive;
* ``stage_rows_per_s``: the uid_subset stage's ``reason`` + ``copies`` on rows (selection's
  ``decide_locally``), i.e. what a fused run or select spends per row on it.

    python benchmarks/bench_uid_subset.py --uids 20000000 --lookups 200000 --json bench_out/bench_uid_subset.json

Memory on Dataflow: each SDK process holds one copy (16 bytes per uid: 320 MB for 20M), read
whole from gs:// (a local file is memory-mapped instead); workers with several SDK processes
hold one per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_subset(path: str, n: int, seed: int = 0) -> np.ndarray:
    from beam_filter.uids import UID_DTYPE, save_uids

    rng = np.random.default_rng(seed)
    hi = rng.integers(0, 2 ** 63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=n, dtype=np.uint64)
    lo = rng.integers(0, 2 ** 63, size=n, dtype=np.uint64)
    order = np.lexsort((lo, hi))
    arr = np.empty(n, UID_DTYPE)
    arr["f0"], arr["f1"] = hi[order], lo[order]
    save_uids(path, arr)
    return arr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uids", type=int, default=20_000_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    from beam_filter.registry import build_stage
    from beam_filter.selection import decide_locally
    from beam_filter.uids import UidSet, load_uids

    work = args.workdir or tempfile.mkdtemp(prefix="bench_uid_subset_")
    path = os.path.join(work, f"subset_{args.uids}.npy")
    t0 = time.perf_counter()
    arr = write_subset(path, args.uids)
    write_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    listed = arr[rng.integers(0, len(arr), size=args.lookups // 2)]
    queries = [f"{int(a):016x}{int(b):016x}" for a, b in listed.tolist()]
    queries += [f"{int(v):032x}" for v in rng.integers(0, 2 ** 62, size=args.lookups - len(queries))]
    del arr, listed

    base = rss_mb()
    t0 = time.perf_counter()
    uid_set = UidSet(load_uids(path))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = sum(uid_set.count(q) for q in queries)
    lookup_s = time.perf_counter() - t0
    after = rss_mb()

    stage = build_stage("dfn", "uid_subset", {"path": path})
    step = max(1, len(queries) // 100_000)        # listed and unlisted uids alike
    rows = [{"uid": q, "shard": "s", "key": str(i)} for i, q in enumerate(queries[::step])]
    t0 = time.perf_counter()
    kept = sum(decide_locally(r, [stage])["kept"] for r in rows)
    stage_s = time.perf_counter() - t0
    out = {"uids": args.uids, "file_mb": round(os.path.getsize(path) / 2 ** 20, 1), "write_s": round(write_s, 2),
           "load_s": round(load_s, 3), "rss_mb": round(after - base, 1), "lookups": len(queries),
           "found": int(found), "lookups_per_s": round(len(queries) / lookup_s),
           "stage_rows": len(rows), "stage_kept": int(kept), "stage_rows_per_s": round(len(rows) / stage_s)}
    print(json.dumps(out))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if not args.workdir:
        os.remove(path)
        os.rmdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
