"""`beam-filter select --metadata` side by side with DataComp's own baselines.py, same rows, same cores.

Issue 14 asks that ``select --metadata`` be at least as fast as DataComp's ``baselines.py``
for every baseline. This runs both on the same synthetic DataComp-layout metadata
(``bench_select.metadata_dir``: parquet + npz parts of ``--part-rows`` rows), alternating
(ours, theirs, theirs, ours, ...), each as a subprocess whose whole process tree is
measured (``bench_select.measure``: wall time, peak summed RSS sampled every 0.2 s), and
checks that the two ``uids.npy`` hold the same array (``np.load`` + ``np.array_equal``; when
not, how many uids only each side kept). Expected difference: image_based near-ties. DataComp
takes the argmax of a batched float32 einsum, whose rounding depends on the batch;
beam_filter settles near-ties in float64 (cluster/centroids.py). At 1.28M synthetic rows one
row differed (ours kept it: float64 says centroid 478, DataComp's batch said 277).

The peer is DataComp's code, not ours: ``baselines.py`` and ``baselines/`` copied from a
checkout of github.com/mlfoundations/datacomp (``--datacomp-repo``: a work tree or a git
directory, read at HEAD) into ``--workdir/datacomp_peer`` and run by ``--dc-python``, a
separate virtualenv (see docs/benchmarks_vs_peers.md for its packages). The copy gets
exactly the edits in :data:`PATCHES`, each found verbatim once or the benchmark stops:

1. ``baselines/utils.py`` ``download()``: with ``DATACOMP_LOCAL_ASSETS`` set, return the
   local file for a name instead of fetching it (no network here): ``fasttext`` -> the
   ``lid.176.ftz`` beam_filter bundles (DataComp fetches ``lid.176.bin``,
   which cannot be fetched offline -- both tools must use the same model for the outputs to
   be comparable), ``imagenet21k_wordnet_ids`` -> beam_filter's bundled copy (the same sha256),
   ``<scale>_centroids`` and ``in1k_clip_vit_l14_<i>`` -> the random files written here.
2. ``baselines.py`` ``check_args``: image_based no longer demands ``torch.cuda.is_available()``.
3. ``baselines/apply_filter.py`` ``apply_filter``: text_based skips ``nltk.download("wordnet")``;
   ``NLTK_DATA`` points nltk at a copy of the WordNet 3.0 database beam_filter reads (Debian's
   wordnet-base in /usr/share/wordnet, plus WordNet's ``lexnames`` and an empty ``index.sense``,
   which nltk's reader wants present and reads only for sense keys).
4. ``baselines/apply_filter.py`` ``get_centroid_ids_gpu``: the device is ``cpu`` instead
   of ``cuda:<i>``; ``--num_gpus`` (set to ``--workers``) is then its number of CPU worker
   processes, as ``--num_workers`` is for the other baselines.

text_based has no preset of ours: the harness writes the one-stage recipe ``text_based: {}``.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set for the peer (an environment variable, not an
edit): torch >= 2.6 would refuse the numpy array inside DataComp's centroid ``.pt`` files.

image_based inputs (``--centroids`` random L/14-sized centroids, rng seed 0 as in
bench_select, and ImageNet-1k "train embeddings" that are noisy copies of every other
centroid) are written in both formats: DataComp's ``.pt`` (a pickled numpy array;
``{"image_features": tensor}`` in 5 files) and ``.npy`` (centroids + target ids). Both
tools read the same ``.pt`` files by default (each derives the targets from the
embeddings, as DataComp does); ``--ours-npy`` gives ours the ``.npy`` centroids and ids.

    python benchmarks/bench_vs_datacomp.py --rows 20000 320000 --repeat 2 \\
        --datacomp-repo /path/to/datacomp --dc-python /tmp/dcvenv/bin/python --json out.json

One JSON line per run: rows, recipe, baseline, tool, seconds, peak_tree_mb, uids_equal
(and kept rows); then one summary line per (rows, recipe) with medians and
``speed_ratio`` (DataComp seconds / ours: >= 1 means ours is at least as fast).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _bench_common import measure_cpu, metadata_dir  # noqa: E402

# our preset -> DataComp's baselines.py arguments (their README's examples)
BASELINES = {
    "datacomp_basic": ["--name", "basic_filter"],
    "datacomp_clip_l14_30pct": ["--name", "clip_score", "--arch", "l14", "--fraction", "0.3"],
    "datacomp_b32_th025": ["--name", "clip_score", "--arch", "b32", "--threshold", "0.25"],
    "image_based": ["--name", "image_based", "--image_based_scale", "small"],
    "image_based_intersect_clip_score": ["--name", "image_based_intersect_clip_score", "--arch", "l14",
                                         "--fraction", "0.3", "--image_based_scale", "small"],
    "laion2b": ["--name", "laion2b"],
    "no_filter": ["--name", "no_filter"],
    "text_based": ["--name", "text_based"],
}
# baselines with no preset of ours: the recipe file the harness writes for them
RECIPE_FILES = {"text_based": "name: text_based\nstages:\n  - text_based: {}\n"}
# WordNet 3.0's lexicographer files (its dict/lexnames), which nltk's reader opens and Debian's
# wordnet-base does not ship; the rest of the WordNet database is linked from /usr/share/wordnet.
WORDNET_LEXNAMES = ["adj.all", "adj.pert", "adv.all"] + [f"noun.{n}" for n in (
    "Tops act animal artifact attribute body cognition communication event feeling food group location "
    "motive object person phenomenon plant possession process quantity relation shape state substance "
    "time").split()] + [f"verb.{n}" for n in (
    "body change cognition communication competition consumption contact creation emotion motion "
    "perception possession social stative weather").split()] + ["adj.ppl"]
WORDNET_DIR = "/usr/share/wordnet"
# The peer's virtualenv (--make-venv), from PyPI: what baselines.py imports, at the versions measured.
# numpy < 2 for fasttext 0.9.3 (its predict() uses np.array(copy=False)); pyarrow 19 is the last
# that takes numpy 1.x; fasttext 0.9.3 builds from source (g++, pybind11) and has tokenize(), which
# image_based's caption filter calls.
PEER_PACKAGES = ["numpy==1.26.4", "pandas==2.2.3", "pyarrow==19.0.1", "fsspec", "tqdm", "nltk==3.10.4",
                 "gcld3==3.0.13", "pybind11", "torch"]
PEER_PACKAGES_BUILT = ["fasttext==0.9.3"]
PEER_FILES = ("baselines.py", "baselines/__init__.py", "baselines/apply_filter.py", "baselines/utils.py")
IN1K_PARTS = 5

# (file, original text, replacement, why): applied to the copy, each original found exactly once.
PATCHES = [
    ("baselines/utils.py",
     '    if root is None:\n        root = os.path.expanduser("~/.cache/datacomp")',
     '    local = os.environ.get("DATACOMP_LOCAL_ASSETS")  # bench_vs_datacomp: offline, local files\n'
     '    if local:\n'
     '        return os.path.join(local, {"fasttext": "lid.176.ftz", "imagenet21k_wordnet_ids":\n'
     '                                    "imagenet21k_wordnet_ids.txt"}.get(name, f"{name}.pt"))\n'
     '    if root is None:\n        root = os.path.expanduser("~/.cache/datacomp")',
     "no network: assets come from local files"),
    ("baselines.py",
     '    if "image_based" in args.name and not torch.cuda.is_available():',
     '    if False:  # bench_vs_datacomp: image_based runs on the CPU',
     "no GPU here"),
    ("baselines/apply_filter.py",
     '        nltk.download("wordnet")\n',
     '        if not os.environ.get("DATACOMP_LOCAL_ASSETS"):  # bench_vs_datacomp: NLTK_DATA has it\n'
     '            nltk.download("wordnet")\n',
     "no network: WordNet from the local database"),
    ("baselines/apply_filter.py",
     '    device_string = f"cuda:{device}"',
     '    device_string = "cpu"  # bench_vs_datacomp: no GPU here',
     "nearest centroid on the CPU"),
]


# ---- the peer --------------------------------------------------------------------------

def _read_peer_file(repo: str, path: str) -> str:
    if os.path.isfile(os.path.join(repo, path)):
        with open(os.path.join(repo, path), encoding="utf-8") as f:
            return f.read()
    return subprocess.run(["git", "--git-dir", repo if os.path.isdir(os.path.join(repo, "objects"))
                           else os.path.join(repo, ".git"), "show", f"HEAD:{path}"],
                          check=True, capture_output=True, text=True).stdout


def prepare_peer(repo: str, workdir: str) -> str:
    """Copy DataComp's baselines into workdir/datacomp_peer with PATCHES applied; returns its dir."""
    peer = os.path.join(workdir, "datacomp_peer")
    shutil.rmtree(peer, ignore_errors=True)            # this benchmark's own copy
    os.makedirs(os.path.join(peer, "baselines"))
    texts = {p: _read_peer_file(repo, p) for p in PEER_FILES}
    for path, old, new, _why in PATCHES:
        if texts[path].count(old) != 1:
            raise SystemExit(f"DataComp's {path} changed: the patched text was not found once:\n{old}")
        texts[path] = texts[path].replace(old, new)
    for path, text in texts.items():
        with open(os.path.join(peer, path), "w", encoding="utf-8") as f:
            f.write(text)
    return peer


def compile_bytecode(peer: str, dc_python: str) -> None:
    """Both tools' modules as an install leaves them, with bytecode caches: pip compiles what it
    installs, but an editable checkout (ours) or a copied script tree (the peer's) is compiled on
    first import, and never cached where PYTHONDONTWRITEBYTECODE is set, which would charge each
    run the compile of every module (~0.3 s for ours on this VM). compileall writes the caches
    regardless of that variable."""
    import beam_filter

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(beam_filter.__file__)], check=True)
    subprocess.run([dc_python, "-m", "compileall", "-q", peer], check=True)


def make_venv(python: str) -> None:
    """Create the peer's virtualenv (the directory two levels above ``python``) from PyPI."""
    venv = os.path.dirname(os.path.dirname(python))
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [os.path.join(venv, "bin", "pip"), "install", "-q"]
    subprocess.run(pip + PEER_PACKAGES, check=True)
    subprocess.run(pip + PEER_PACKAGES_BUILT, check=True)


def write_wordnet(assets: str) -> None:
    """What text_based reads: the ImageNet-21k WordNet ids (our bundled copy, the same sha256 as
    DataComp's download) and, for nltk, ``nltk_data/corpora/wordnet``: a copy of WordNet 3.0 from
    Debian's wordnet-base (the database beam_filter reads) plus its ``lexnames``."""
    from beam_filter.rules import wordnet

    ids = os.path.join(assets, "imagenet21k_wordnet_ids.txt")
    if not os.path.lexists(ids):
        os.symlink(os.path.join(os.path.dirname(os.path.abspath(wordnet.__file__)), "data", wordnet.IN21K_FILE), ids)
    corpus = os.path.join(assets, "nltk_data", "corpora", "wordnet")
    os.makedirs(corpus, exist_ok=True)
    if os.path.isdir(WORDNET_DIR):       # copies: nltk 3.10 refuses links that leave its corpus root
        for name in os.listdir(WORDNET_DIR):
            if os.path.islink(os.path.join(corpus, name)):
                os.remove(os.path.join(corpus, name))
            if not os.path.exists(os.path.join(corpus, name)):
                shutil.copyfile(os.path.join(WORDNET_DIR, name), os.path.join(corpus, name))
    # nltk's reader wants index.sense to exist (wordnet-sense-index, another Debian package); it only
    # reads it for sense keys, which synsets() does not use
    open(os.path.join(corpus, "index.sense"), "a").close()
    with open(os.path.join(corpus, "lexnames"), "w") as f:
        f.writelines(f"{i:02d}\t{name}\t{ {'adj': 3, 'adv': 4, 'noun': 1, 'verb': 2}[name.split('.')[0]] }\n"
                     for i, name in enumerate(WORDNET_LEXNAMES))


def write_assets(workdir: str, n_centroids: int, dim: int = 768) -> dict:
    """Random centroids (as bench_select.image_based_files) and ImageNet-1k-like embeddings whose
    nearest centroids are the even ids, in DataComp's .pt format and as .npy."""
    import torch

    assets = os.path.join(workdir, "assets")
    os.makedirs(assets, exist_ok=True)
    rng = np.random.default_rng(0)
    cents = rng.standard_normal((n_centroids, dim)).astype(np.float32)
    targets = np.arange(0, n_centroids, 2, dtype=np.int64)
    feats = np.repeat(cents[targets], 2, axis=0)
    feats += 0.05 * rng.standard_normal(feats.shape).astype(np.float32)
    nearest = np.unique(np.argmax(feats @ cents.T, axis=1))
    if not np.array_equal(nearest, targets):
        raise SystemExit("the generated ImageNet embeddings do not point at the even centroids")
    np.save(os.path.join(assets, "centroids.npy"), cents)
    np.save(os.path.join(assets, "targets.npy"), targets)
    # DataComp ships a numpy array in a .pt written with pickle protocol 4 (torch.save's default, 2,
    # stores the array's bytes through _codecs.encode, which beam_filter's safe reader refuses).
    torch.save(cents, os.path.join(assets, "small_centroids.pt"), pickle_protocol=4)
    pt_feats = []
    for i, part in enumerate(np.array_split(feats, IN1K_PARTS)):
        path = os.path.join(assets, f"in1k_clip_vit_l14_{i}.pt")
        torch.save({"image_features": torch.from_numpy(part.astype(np.float16))}, path)
        pt_feats.append(path)
    from beam_filter.rules.language import bundled_lid_model_path

    write_wordnet(assets)
    link = os.path.join(assets, "lid.176.ftz")
    if os.path.lexists(link) and os.path.realpath(link) != os.path.realpath(bundled_lid_model_path()):
        os.remove(link)     # a link to an older install's model
    if not os.path.lexists(link):
        os.symlink(bundled_lid_model_path(), link)
    return {"dir": assets, "centroids_pt": os.path.join(assets, "small_centroids.pt"), "targets_pt": pt_feats,
            "centroids_npy": os.path.join(assets, "centroids.npy"),
            "targets_npy": os.path.join(assets, "targets.npy")}



# ---- one run ---------------------------------------------------------------------------

def ours_cmd(recipe: str, meta: str, out: str, workers: int, assets: dict, use_npy: bool) -> list[str]:
    if recipe in RECIPE_FILES:
        path = os.path.join(assets["dir"], f"{recipe}.yaml")
        with open(path, "w") as f:
            f.write(RECIPE_FILES[recipe])
        recipe = path
    cmd = [sys.executable, "-m", "beam_filter.cli", "select", "--recipe", recipe, "--metadata", meta,
           "--output", out, "--no-progress"]
    if recipe.startswith("image_based"):
        c, t = ((assets["centroids_npy"], assets["targets_npy"]) if use_npy
                else (assets["centroids_pt"], ",".join(assets["targets_pt"])))
        cmd += ["--set", f"image_based.centroids={c}", "--set", f"image_based.targets={t}"]
    if workers != os.cpu_count():
        cmd.append(f"--direct_num_workers={workers}")
    return cmd


def theirs_cmd(recipe: str, meta: str, out: str, workers: int, args) -> list[str]:
    extra = BASELINES[recipe]
    if recipe.startswith("image_based"):
        extra = extra + ["--num_gpus", str(workers), "--batch_size", "1024"]
    return [args.dc_python, os.path.join(args.workdir, "datacomp_peer", "baselines.py"), *extra,
            "--metadata_dir", meta, "--save_path", os.path.join(out, "uids.npy"), "--num_workers", str(workers)]


def one_run(tool: str, recipe: str, rows: int, meta: str, assets: dict, args) -> dict:
    out = os.path.join(args.workdir, f"out_{recipe}_{rows}_{tool}")
    shutil.rmtree(out, ignore_errors=True)              # this benchmark's own output directory
    if tool == "datacomp":
        os.makedirs(out)
        cmd = theirs_cmd(recipe, meta, out, args.workers, args)
    else:
        cmd = ours_cmd(recipe, meta, out, args.workers, assets, args.ours_npy)
    load = os.getloadavg()[0]
    r = measure_cpu(cmd)
    kept = len(np.load(os.path.join(out, "uids.npy")))
    r.update(rows=rows, recipe=recipe, baseline=" ".join(BASELINES[recipe]),
             tool="beam-filter select" if tool == "ours" else "datacomp baselines.py",
             workers=args.workers, kept=kept, load1_before=round(load, 2))
    return r


def compare_uids(recipe: str, rows: int, workdir: str) -> tuple[bool, list[int]]:
    """(identical arrays, [uids only in ours, uids only in DataComp's]) of the two uids.npy."""
    a, b = (np.load(os.path.join(workdir, f"out_{recipe}_{rows}_{t}", "uids.npy")) for t in ("ours", "datacomp"))
    if a.dtype == b.dtype and np.array_equal(a, b):
        return True, [0, 0]
    sa, sb = set(a.tolist()), set(b.tolist())
    return False, [len(sa - sb), len(sb - sa)]


def peer_env(assets: dict) -> None:
    os.environ["DATACOMP_LOCAL_ASSETS"] = assets["dir"]
    os.environ["NLTK_DATA"] = os.path.join(assets["dir"], "nltk_data")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20000])
    ap.add_argument("--part-rows", type=int, default=50000)
    ap.add_argument("--recipes", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool, alternating; medians reported")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="DataComp's --num_workers/--num_gpus; ours: its process pool (all cores by default)")
    ap.add_argument("--centroids", type=int, default=1024, help="random centroids for image_based "
                    "(DataComp ships 100,000)")
    ap.add_argument("--ours-npy", action="store_true", help="ours reads .npy centroids + ids, not the .pt files")
    ap.add_argument("--datacomp-repo", default="/work/.mirror/mlfoundations+datacomp/repo",
                    help="checkout (work tree or git dir) of github.com/mlfoundations/datacomp")
    ap.add_argument("--dc-python", default="/tmp/dcvenv/bin/python", help="the peer's virtualenv python")
    ap.add_argument("--metadata-workdir", default="/tmp/bench_select", help="where bench_select keeps metadata")
    ap.add_argument("--workdir", default="/tmp/bench_vs_datacomp")
    ap.add_argument("--json")
    ap.add_argument("--make-venv", action="store_true", help="create --dc-python's virtualenv first (PyPI)")
    args = ap.parse_args()
    if args.make_venv and not os.path.exists(args.dc_python):
        make_venv(args.dc_python)
    missing = [what for what, ok in ((f"the peer's python {args.dc_python} (--make-venv makes it)",
                                      os.path.exists(args.dc_python)),
                                     (f"a DataComp checkout at {args.datacomp_repo} (--datacomp-repo)",
                                      os.path.exists(args.datacomp_repo))) if not ok]
    if missing:
        # `make bench` goes on without the side-by-side; the JSON says why it is absent.
        print(json.dumps({"skipped": "missing " + "; ".join(missing)}), flush=True)
        print("bench_vs_datacomp: skipped, missing " + "; ".join(missing), file=sys.stderr)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as f:
                json.dump({"skipped": missing}, f)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    compile_bytecode(prepare_peer(args.datacomp_repo, args.workdir), args.dc_python)
    assets = write_assets(args.workdir, args.centroids)
    peer_env(assets)
    runs, summaries = [], []
    for rows in args.rows:
        meta = metadata_dir(args.metadata_workdir, rows, args.part_rows)
        for recipe in args.recipes:
            mine = []
            for i in range(args.repeat):
                for tool in (("ours", "datacomp") if i % 2 == 0 else ("datacomp", "ours")):
                    r = one_run(tool, recipe, rows, meta, assets, args)
                    mine.append(r)
                equal, diff = compare_uids(recipe, rows, args.workdir)
                for r in mine[-2:]:
                    r["uids_equal"] = equal
                    if not equal:
                        r["uids_only_ours_only_datacomp"] = diff
                    print(json.dumps(r), flush=True)
            s = {"summary": True, "rows": rows, "recipe": recipe, "workers": args.workers,
                 "uids_equal": all(r["uids_equal"] for r in mine)}
            for tool, label in (("ours", "beam-filter select"), ("datacomp", "datacomp baselines.py")):
                tr = [r for r in mine if r["tool"] == label]
                s[tool] = {"seconds_median": statistics.median(r["seconds"] for r in tr),
                           "seconds_all": [r["seconds"] for r in tr],
                           "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in tr),
                           "peak_tree_mb_max": max(r["peak_tree_mb"] for r in tr),
                           "rows_per_s": round(rows / statistics.median(r["seconds"] for r in tr))}
            s["speed_ratio"] = round(s["datacomp"]["seconds_median"] / s["ours"]["seconds_median"], 2)
            print(json.dumps(s), flush=True)
            runs += mine
            summaries.append(s)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "summaries": summaries, "patches": [p[3] for p in PATCHES],
                       "cores": os.cpu_count()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
