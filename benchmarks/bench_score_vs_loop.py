"""`beam-filter score` against a plain loop over the same shards: the model path and the rule path.

Issue 14 asks that ``score`` with a real-size architecture stay within 10% of a plain
loop that decodes with PIL, preprocesses like open_clip and calls
``encode_image``/``encode_text`` in batches of the same size, and that the rule path
reach 1.5x a single-process loop on 2 cores. Both sides run here in the same session,
alternating, each in a fresh subprocess whose whole process tree is measured
(``bench_select.measure``: wall time, peak summed RSS):

* ``clip``: ``beam-filter score --recipe datacomp_b32_th025`` with the clip stage pointed
  at a RANDOM-weight real-size ViT-B-32 checkpoint (``open_clip.create_model('ViT-B-32',
  pretrained=None)`` saved as ``{"state_dict": ...}``: a local checkpoint the stage's
  ``pretrained`` parameter accepts; nothing is downloaded, and throughput does not depend
  on the weights), fp32 on the CPU, ``batch_size`` images per forward pass; against
  :func:`loop_clip` -- tarfile, PIL, the model's own ``preprocess_val``, the same batch
  size, no Beam, no thread pool. The loop keeps its scores and the benchmark compares them
  with ours (``max_abs_score_diff``): both sides did the same work.
* ``rules``: ``beam-filter score --recipe datacomp_basic`` against :func:`loop_rules`,
  which calls ``shard_work.process_shard`` shard after shard in one process (the function
  the fused path runs per shard; benchmarks/bench_pipeline.py's ``loop_rules`` does the
  same for ``run``): same reading, same rules, same scores files.

Pools come from the ``make-sample`` generator (``devtools.sample_pool.make_sample``, seed 1,
``--shard-size`` samples per shard); above ``--max-generated`` samples the generated shards
are copied (new shard names, same content) to reach the size, as bench_pipeline does,
because the generator makes ~100 samples/s. Pools and the checkpoint are kept under
--workdir and reused.

    python benchmarks/bench_score_vs_loop.py --samples 2000 --kinds clip rules --repeat 3
    python benchmarks/bench_score_vs_loop.py --samples 2000 20000 100000 --kinds rules --json out.json
    python benchmarks/bench_score_vs_loop.py --samples 2000 --kinds clip --profile /tmp/score.prof

Prints one JSON line per run and one summary line per (kind, size) with medians:
``samples_per_s`` of each side and ``ratio`` (ours / loop; the target is >= 0.9 for clip
and >= 1.5 for rules), plus marginal samples/s between consecutive sizes (start-up
cancels out). The load average before each run is recorded: on a shared machine the
medians are what to quote.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _bench_common import measure_cpu, replicate_shards  # noqa: E402

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CLIP_RECIPE, CLIP_STAGE = "datacomp_b32_th025", "clip_b32"
RULE_RECIPE = "datacomp_basic"


# ---- inputs --------------------------------------------------------------------------

def make_pool(workdir: str, samples: int, shard_size: int, max_generated: int) -> str:
    """A make-sample pool of ``samples`` samples (generated up to max_generated, then shard copies)."""
    pool = os.path.join(workdir, f"pool_{samples}_{shard_size}")
    if os.path.isdir(pool):
        return pool
    from beam_filter.devtools.sample_pool import make_sample

    copies = max(1, math.ceil(samples / max_generated))
    if samples % copies:
        raise SystemExit(f"--samples {samples} above --max-generated must be a multiple of the copy count {copies}")
    tmp = pool + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)      # this benchmark's own half-written pool
    t0 = time.time()
    make_sample(tmp, samples=samples // copies, seed=1, shard_size=shard_size)
    index = replicate_shards(tmp, copies)
    os.replace(tmp, pool)
    print(f"pool {pool}: {samples // copies} generated x {copies} in {index} shards ({time.time() - t0:.0f} s)",
          file=sys.stderr, flush=True)
    return pool


def write_checkpoint(workdir: str, arch: str) -> str:
    """A random-weight real-size open_clip checkpoint of ``arch`` (seed 0), written once."""
    path = os.path.join(workdir, f"random_{arch}.pt")
    if not os.path.isfile(path):
        import open_clip
        import torch

        torch.manual_seed(0)
        net = open_clip.create_model(arch, pretrained=None, device="cpu")
        torch.save({"state_dict": net.state_dict()}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


# ---- the plain loops (run in a child process) ------------------------------------------

def iter_samples(shard: str):
    """(key, members by extension) of one tar, grouped webdataset-style by consecutive key."""
    key, group = None, {}
    with tarfile.open(shard) as tf:
        for m in tf:
            if not m.isfile():
                continue
            base = os.path.basename(m.name)
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            k = os.path.join(os.path.dirname(m.name), stem)
            if k != key:
                if group:
                    yield key, group
                key, group = k, {}
            group.setdefault(ext.lower(), tf.extractfile(m).read())
    if group:
        yield key, group


def loop_clip(pool: str, ckpt: str, arch: str, batch_size: int, result: str) -> None:
    """PIL decode, open_clip's preprocess_val, encode_image/encode_text per batch, cosine score."""
    t0 = time.perf_counter()
    import numpy as np
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=ckpt, device="cpu")
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    t_loaded = time.perf_counter()
    scores: dict[str, float] = {}
    counts = {"samples": 0, "bad_image": 0, "no_caption": 0, "bad_shard": 0}
    prep_s = model_s = 0.0
    pending: list[tuple[str, object, str]] = []

    def flush():
        nonlocal model_s
        t = time.perf_counter()
        with torch.inference_mode():
            img = model.encode_image(torch.stack([p[1] for p in pending]))
            txt = model.encode_text(tokenizer([p[2] for p in pending]))
            img = torch.nn.functional.normalize(img, dim=-1)
            txt = torch.nn.functional.normalize(txt, dim=-1)
            s = (img * txt).sum(-1).numpy()
        for (name, _, _), v in zip(pending, s):
            scores[name] = float(v)
        pending.clear()
        model_s += time.perf_counter() - t

    for shard in sorted(glob.glob(os.path.join(pool, "*.tar"))):
        stem = os.path.splitext(os.path.basename(shard))[0]
        try:
            for key, group in iter_samples(shard):
                counts["samples"] += 1
                ext = next((e for e in IMAGE_EXTS if e in group), None)
                try:
                    caption = group["txt"].decode("utf-8")
                except (KeyError, UnicodeDecodeError):
                    counts["no_caption"] += 1
                    continue
                t = time.perf_counter()
                try:
                    x = preprocess(Image.open(io.BytesIO(group[ext])))
                except Exception:  # any decoder failure: the sample has no image score
                    counts["bad_image"] += 1
                    continue
                finally:
                    prep_s += time.perf_counter() - t
                pending.append((f"{stem}/{key}", x, caption))
                if len(pending) == batch_size:
                    flush()
        except (tarfile.TarError, OSError, EOFError):
            counts["bad_shard"] += 1
    if pending:
        flush()
    end = time.perf_counter()
    np.save(result + ".npy", np.array(sorted(scores.items()), dtype=object), allow_pickle=True)
    with open(result, "w") as f:
        json.dump({"load_s": round(t_loaded - t0, 2), "loop_s": round(end - t_loaded, 2),
                   "decode_preprocess_s": round(prep_s, 2), "model_s": round(model_s, 2),
                   "scored": len(scores), **counts}, f)


def loop_rules(pool: str, recipe: str, out: str, result: str) -> None:
    """shard_work.process_shard on every shard, one after the other, in this one process."""
    t0 = time.perf_counter()
    from beam_filter.layout import OutputLayout
    from beam_filter.recipe import load_recipe
    from beam_filter.shard_work import process_shard

    stages = [s for s in load_recipe(recipe).leaf_stages() if s.feature_columns()]
    layout = OutputLayout(out)
    os.makedirs(out, exist_ok=True)
    samples = 0
    for shard in sorted(glob.glob(os.path.join(pool, "*.tar"))):
        samples += process_shard(shard, stages, None, layout, {}).counts["samples_read"]
    with open(result, "w") as f:
        json.dump({"samples": samples, "loop_s": round(time.perf_counter() - t0, 2)}, f)


# ---- one run of either side -------------------------------------------------------------

def ours_cmd(kind: str, pool: str, out: str, ckpt: str, batch_size: int) -> list[str]:
    cmd = [sys.executable, "-m", "beam_filter.cli", "score", "--input", os.path.join(pool, "*.tar"),
           "--output", out, "--no-progress"]
    if kind == "tiny_clip":         # ``ckpt``: the --test-models directory
        return cmd + ["--recipe", CLIP_RECIPE, "--test-models", ckpt]
    if kind == "clip":
        return cmd + ["--recipe", CLIP_RECIPE, "--set", f"{CLIP_STAGE}.pretrained={ckpt}",
                      "--set", f"{CLIP_STAGE}.device=cpu", "--set", f"{CLIP_STAGE}.precision=fp32",
                      "--set", f"{CLIP_STAGE}.batch_size={batch_size}"]
    return cmd + ["--recipe", RULE_RECIPE]


def loop_cmd(kind: str, pool: str, out: str, ckpt: str, args) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--pool", pool, "--out", out,
           "--result", os.path.join(out, "loop.json")]
    if kind == "clip":
        cmd += ["--ckpt", ckpt, "--arch", args.arch, "--batch-size", str(args.batch_size)]
    return cmd


def our_scores(out: str) -> dict[str, float]:
    import pyarrow.parquet as pq

    column = f"{CLIP_STAGE}_score"
    scores = {}
    for path in sorted(glob.glob(os.path.join(out, "scores", "*.parquet"))):
        t = pq.read_table(path).to_pydict()
        stem = os.path.splitext(os.path.basename(path))[0]
        for key, value in zip(t["key"], t[column]):
            if value is not None and not math.isnan(value):
                scores[f"{stem}/{key}"] = value
    return scores


def score_diff(ours_out: str, loop_out: str) -> dict:
    """Max |ours - loop| over the samples both scored, and how many each scored."""
    import numpy as np

    loop = dict(np.load(os.path.join(loop_out, "loop.json.npy"), allow_pickle=True).tolist())
    ours = our_scores(ours_out)
    common = ours.keys() & loop.keys()
    diff = max((abs(ours[k] - loop[k]) for k in common), default=float("nan"))
    return {"scored_ours": len(ours), "scored_loop": len(loop), "compared": len(common),
            "max_abs_score_diff": round(diff, 6)}


def one_run(kind: str, side: str, pool: str, samples: int, ckpt: str, args) -> dict:
    out = os.path.join(args.workdir, f"out_{kind}_{side}_{samples}")
    shutil.rmtree(out, ignore_errors=True)        # this benchmark's own output directory
    if side == "loop":
        os.makedirs(out)
    cmd = ours_cmd(kind, pool, out, ckpt, args.batch_size) if side == "ours" else loop_cmd(kind, pool, out, ckpt, args)
    load = os.getloadavg()[0]
    r = measure_cpu(cmd)
    r.update(kind=kind, side=side, tool="beam-filter score" if side == "ours" else "plain loop",
             samples=samples, samples_per_s=round(samples / r["seconds"], 2), load1_before=round(load, 2))
    if side == "loop":
        with open(os.path.join(out, "loop.json")) as f:
            r["loop_detail"] = json.load(f)
    return r


def summarize(kind: str, samples: int, runs: list[dict]) -> dict:
    out = {"summary": True, "kind": kind, "samples": samples, "cores": os.cpu_count()}
    for side in sides(kind):
        mine = [r for r in runs if r["side"] == side]
        secs = statistics.median(r["seconds"] for r in mine)
        out[side] = {"seconds_median": round(secs, 2), "seconds_all": [r["seconds"] for r in mine],
                     "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in mine),
                     "samples_per_s": round(samples / secs, 2),
                     "peak_tree_mb_max": max(r["peak_tree_mb"] for r in mine),
                     "load1_before": [r["load1_before"] for r in mine]}
    if "loop" in out:
        out["ratio"] = round(out["ours"]["samples_per_s"] / out["loop"]["samples_per_s"], 3)
        out["target"] = 0.9 if kind == "clip" else 1.5
    return out


def sides(kind: str) -> tuple:
    """``tiny_clip`` (the --test-models CLIP twin) measures our model path's samples/s and peak RSS
    at pool sizes a real-size model cannot reach on a CPU; a loop beside it would compare nothing."""
    return ("ours",) if kind == "tiny_clip" else ("ours", "loop")


def test_models_dir(workdir: str) -> str:
    path = os.path.join(workdir, "test_models")
    if not os.path.isdir(path):
        subprocess.run([sys.executable, "-m", "beam_filter.cli", "make-test-models", path], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def profile_ours(pool: str, ckpt: str, args) -> None:
    """Our clip score once under cProfile (main thread; the decode pool's threads are not seen)."""
    import pstats

    out = os.path.join(args.workdir, "out_profile")
    shutil.rmtree(out, ignore_errors=True)        # this benchmark's own output directory
    cmd = ours_cmd("clip", pool, out, ckpt, args.batch_size)
    cmd = cmd[:1] + ["-m", "cProfile", "-o", args.profile] + cmd[1:]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"profiled run: {time.perf_counter() - t0:.1f} s; {args.profile}", file=sys.stderr)
    text = io.StringIO()
    st = pstats.Stats(args.profile, stream=text)
    st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(30)
    with open(args.profile + ".txt", "w") as f:
        f.write(text.getvalue())
    print(f"top functions: {args.profile}.txt", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[2000])
    ap.add_argument("--kinds", nargs="+", default=["clip", "rules"], choices=["clip", "rules", "tiny_clip"])
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, alternating; medians reported")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward pass, both sides")
    ap.add_argument("--shard-size", type=int, default=1000, help="samples per generated shard")
    ap.add_argument("--max-generated", type=int, default=20000, help="above this, copy generated shards")
    ap.add_argument("--workdir", default="/tmp/bench_score_vs_loop")
    ap.add_argument("--profile", help="also profile one clip score run (cProfile) into this file")
    ap.add_argument("--json")
    # child-process mode: one plain loop
    ap.add_argument("--child", choices=["clip", "rules"], help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "clip":
        loop_clip(args.pool, args.ckpt, args.arch, args.batch_size, args.result)
        return 0
    if args.child == "rules":
        loop_rules(args.pool, RULE_RECIPE, args.out, args.result)
        return 0

    os.makedirs(args.workdir, exist_ok=True)
    ckpt = write_checkpoint(args.workdir, args.arch) if "clip" in args.kinds else ""
    results, summaries = [], []
    for samples in args.samples:
        pool = make_pool(args.workdir, samples, args.shard_size, args.max_generated)
        for kind in args.kinds:
            runs = []
            model = test_models_dir(args.workdir) if kind == "tiny_clip" else ckpt
            for i in range(args.repeat):
                for side in (sides(kind) if i % 2 == 0 else sides(kind)[::-1]):
                    r = one_run(kind, side, pool, samples, model, args)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
            s = summarize(kind, samples, runs)
            if kind == "clip":
                s.update(score_diff(os.path.join(args.workdir, f"out_clip_ours_{samples}"),
                                    os.path.join(args.workdir, f"out_clip_loop_{samples}")))
            print(json.dumps(s), flush=True)
            results += runs
            summaries.append(s)
    for kind in args.kinds:
        mine = sorted((s for s in summaries if s["kind"] == kind), key=lambda s: s["samples"])
        for a, b in zip(mine, mine[1:]):
            m = {"marginal": True, "kind": kind, "from": a["samples"], "to": b["samples"]}
            for side in sides(kind):
                dt = b[side]["seconds_median"] - a[side]["seconds_median"]
                m[f"{side}_samples_per_s"] = round((b["samples"] - a["samples"]) / dt, 1) if dt > 0 else None
            if m["ours_samples_per_s"] and m.get("loop_samples_per_s"):
                m["ratio"] = round(m["ours_samples_per_s"] / m["loop_samples_per_s"], 3)
            print(json.dumps(m), flush=True)
            summaries.append(m)
    if args.profile:
        profile_ours(make_pool(args.workdir, args.samples[0], args.shard_size, args.max_generated), ckpt, args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"runs": results, "summaries": summaries, "machine": machine()}, f, indent=1)
    return 0


def machine() -> str:
    import platform

    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


if __name__ == "__main__":
    os.environ.setdefault("BEAM_FILTER_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
