"""sha256 of every output file of every preset on the bundled sample pool (tiny test models).

Refactors promise byte-identical outputs; this is how that is shown:

    python scripts/preset_digests.py --workdir /tmp/digests > before.json
    ... change the code ...
    python scripts/preset_digests.py --workdir /tmp/digests2 > after.json
    python scripts/preset_digests.py --compare before.json after.json

Every preset runs with ``beam-filter run --test-models`` on the 240-sample pool
of ``make demo`` (seed 0, with broken shards). Presets that need files get
deterministic ones made here: a DFN-like uid subset (every other uid of the
pool), k-means centroids and target ids for image_based, target embeddings for
cluster_importance. report.json / report.html / report_*.png are left out:
they carry timings; so are the output marker and lock. Outputs name the input
paths, so compare runs made with the same ``--workdir``.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SKIP = ("report.json", "report.html", ".beam_filter.lock", ".beam_filter_output")


def _cli(*args: str) -> None:
    env = {**os.environ, "BEAM_FILTER_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "beam_filter.cli", *args], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"beam-filter {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def _pool_uids(pool: str) -> list[str]:
    uids = []
    for path in sorted(glob.glob(os.path.join(pool, "*.tar"))):
        try:
            with tarfile.open(path) as t:
                for m in t.getmembers():
                    if m.name.endswith(".json"):
                        try:
                            uid = json.loads(t.extractfile(m).read()).get("uid")
                        except (ValueError, AttributeError):
                            continue
                        if isinstance(uid, str):
                            uids.append(uid)
        except (tarfile.TarError, OSError, EOFError):
            continue
    return sorted(set(uids))


def _embed_dim(models: str) -> int:
    for path in glob.glob(os.path.join(models, "clip_tiny", "*.json")):
        with open(path) as f:
            cfg = json.load(f)
        if "embed_dim" in cfg:
            return int(cfg["embed_dim"])
    raise SystemExit(f"no tiny CLIP config with embed_dim under {models}/clip_tiny")


def make_inputs(workdir: str) -> dict:
    """The pool, the tiny models and the files some presets need; returns the --set values per preset."""
    from beam_filter.uids import save_uids, uids_to_array

    pool, models = os.path.join(workdir, "pool"), os.path.join(workdir, "models")
    if not os.path.isdir(pool):
        _cli("make-sample", "--output", pool, "--samples", "240", "--seed", "0", "--broken-shards")
    if not os.path.isdir(models):
        _cli("make-test-models", models)
    dim = _embed_dim(models)
    rng = np.random.default_rng(0)
    files = os.path.join(workdir, "files")
    os.makedirs(files, exist_ok=True)
    dfn = os.path.join(files, "dfn.npy")
    save_uids(dfn, uids_to_array(_pool_uids(pool)[::2]))
    centroids = os.path.join(files, "centroids.npy")
    np.save(centroids, rng.standard_normal((16, dim)).astype(np.float32))
    targets = os.path.join(files, "targets.npy")
    np.save(targets, np.arange(0, 16, 2, dtype=np.int64))
    target_emb = os.path.join(files, "target_embeddings.npy")
    np.save(target_emb, rng.standard_normal((64, dim)).astype(np.float32))
    return {
        "open_qwen2vl": [f"dfn_or_mlm.dfn.path={dfn}"],
        "image_based": [f"image_based.centroids={centroids}", f"image_based.targets={targets}"],
        "image_based_intersect_clip_score": [f"image_based.centroids={centroids}",
                                             f"image_based.targets={targets}"],
        "devil_details": [f"cluster_importance.target={target_emb}"],
        "hype": [f"imagenet_clusters.centroids={centroids}", f"imagenet_clusters.targets={targets}"],
        "hype_dfn": [f"hype_or_dfn.dfn.path={dfn}", f"imagenet_clusters.centroids={centroids}",
                     f"imagenet_clusters.targets={targets}"],
        "tmars_released": [f"tmars.path={dfn}"],
    }


def digests(output: str) -> dict:
    out = {}
    for root, _, names in os.walk(output):
        for name in sorted(names):
            if name in SKIP or (name.startswith("report_") and name.endswith(".png")):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, output)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def run_all(workdir: str, presets: list[str] | None) -> dict:
    from beam_filter.recipe import list_presets

    sets = make_inputs(workdir)
    pool, models = os.path.join(workdir, "pool"), os.path.join(workdir, "models")
    result = {}
    for preset in presets or list_presets():
        if preset == "laion2b":
            try:
                import gcld3  # noqa: F401
            except ImportError:
                print(f"skipping {preset}: gcld3 is not installed", file=sys.stderr)
                continue
        out = os.path.join(workdir, "out", preset)
        shutil.rmtree(out, ignore_errors=True)      # this script's own directory
        args = ["run", "--recipe", preset, "--input", os.path.join(pool, "*.tar"), "--output", out,
                "--test-models", models, "--no-progress"]
        for s in sets.get(preset, []):
            args += ["--set", s]
        _cli(*args)
        result[preset] = digests(out)
        print(f"{preset}: {len(result[preset])} files", file=sys.stderr)
    return result


def compare(a_path: str, b_path: str) -> int:
    with open(a_path) as f:
        a = json.load(f)
    with open(b_path) as f:
        b = json.load(f)
    bad = 0
    for preset in sorted(set(a) | set(b)):
        fa, fb = a.get(preset, {}), b.get(preset, {})
        diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        status = "identical" if not diff else f"{len(diff)} differ: {', '.join(diff[:6])}"
        print(f"{preset:34s} {len(fa):4d} files  {status}")
        bad += bool(diff)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/beam_filter_digests")
    ap.add_argument("--preset", action="append", help="only these presets (repeatable)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    json.dump(run_all(args.workdir, args.preset), sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
