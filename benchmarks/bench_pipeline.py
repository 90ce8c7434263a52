"""read -> rules -> decisions, and reshard: the Beam pipeline vs a plain single-process loop.

Both sides do the same work with the same code (beam_filter.shard_work.process_shard
and beam_filter.resharding.write_output_shard): the loop calls it shard after shard in one
process, the pipeline runs it on the local runner, whose fused step spreads shards over one
process per core (transforms/fused.py).
Each variant runs in a fresh subprocess so its peak RSS (and its workers') is measured alone.

    python benchmarks/bench_pipeline.py --pool bench_out/pool --samples 4000 --replicate 16 --json bench_out/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_variant(variant: str, pool: str, out: str, recipe: str, shard_size: int) -> dict:
    """Run one variant in this process (called in a subprocess by main)."""
    from beam_filter.cli import match_shards
    from beam_filter.job import Job
    from beam_filter.pipeline import local_processes, make_pipeline, pipeline_options
    from beam_filter.recipe import load_recipe
    from beam_filter.layout import OutputLayout

    shards = match_shards([os.path.join(pool, "*.tar")])
    recipe_obj = load_recipe(recipe)
    layout = OutputLayout(out)
    t0 = time.perf_counter()
    samples = 0
    if variant == "loop_rules":
        from beam_filter.shard_work import process_shard

        feature_stages = [s for s in recipe_obj.leaf_stages() if s.feature_columns()]
        for shard in shards:
            samples += process_shard(shard, feature_stages, recipe_obj.stages, layout, {}).counts["samples_read"]
    elif variant == "beam_rules":
        job = Job(command="run", output=out, recipe=recipe_obj, shards=shards)
        p = make_pipeline(pipeline_options([]))
        from beam_filter.pipeline import _score

        _score(p, job, layout)
        p.run().wait_until_finish()
        samples = _count_rows(os.path.join(out, "decisions"))
    elif variant == "loop_reshard":
        from beam_filter.pipeline import _shard_paths_by_stem, read_kept
        from beam_filter.resharding import expand_kept, plan_output_shards, write_output_shard

        decisions = sorted(os.path.join(pool + "_decisions", f) for f in os.listdir(pool + "_decisions"))
        by_stem = _shard_paths_by_stem(shards)
        kept = [read_kept(d, by_stem) for d in decisions]
        by_shard = {k.shard: expand_kept(k.kept) for k in kept}
        plan = plan_output_shards([(k.shard, len(by_shard[k.shard])) for k in kept], shard_size)
        os.makedirs(layout.shards_dir, exist_ok=True)
        for o in plan:
            parts = [(seg.shard, by_shard[seg.shard][seg.start:seg.end]) for seg in o.segments]
            samples += write_output_shard(layout.shard_tar(o.index), parts)["count"]
    elif variant == "beam_reshard":
        from beam_filter.pipeline import _shard_paths_by_stem, read_kept
        from beam_filter.transforms.reshard import WriteShards

        import apache_beam as beam

        decisions = sorted(os.path.join(pool + "_decisions", f) for f in os.listdir(pool + "_decisions"))
        options = pipeline_options([])
        p = make_pipeline(options)
        (p | beam.Create(decisions) | beam.Map(read_kept, _shard_paths_by_stem(shards))
         | WriteShards(layout, shard_size, processes=local_processes(options)))
        p.run().wait_until_finish()
        samples = sum(json.load(open(f))["count"] for f in layout.shard_stats_files())
    else:
        raise SystemExit(f"unknown variant {variant}")
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"variant": variant, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1),
            "peak_rss_mb": {"main_process": round(own, 1), "largest_worker": round(workers, 1)}}


def _count_rows(directory: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(os.path.join(directory, f)).num_rows for f in os.listdir(directory))


def make_pool(pool: str, samples: int, replicate: int) -> None:
    """Generate ``samples`` with make_sample, then copy its shards ``replicate`` times.

    Copies (new shard names, same content) give a DataComp-like shard count cheaply;
    the generator is the slow part (~100 samples/s), not what is measured.
    """
    from _bench_common import replicate_shards     # benchmarks/ is on sys.path (this script's dir)
    from beam_filter.devtools.sample_pool import make_sample

    t0 = time.time()
    make_sample(pool, samples=samples, seed=1, shard_size=1000)
    index = replicate_shards(pool, replicate)
    print(f"pool: {samples} generated samples x {replicate} = {samples * replicate} samples in {index} shards "
          f"({time.time() - t0:.0f}s)", file=sys.stderr)


def measure(variant: str, args) -> dict:
    out = os.path.join(args.work, variant)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--pool", args.pool, "--work", args.work,
                           "--recipe", args.recipe, "--shard-size", str(args.shard_size)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", default="bench_out/pool")
    ap.add_argument("--work", default="bench_out/pipeline")
    ap.add_argument("--samples", type=int, default=4000, help="samples generated")
    ap.add_argument("--replicate", type=int, default=16, help="copies of the generated shards")
    ap.add_argument("--recipe", default="datacomp_basic")
    ap.add_argument("--shard-size", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.pool, os.path.join(args.work, args.child),
                                     args.recipe, args.shard_size)))
        return
    if not os.path.isdir(args.pool):
        make_pool(args.pool, args.samples, args.replicate)
    results = []
    for variant in ("loop_rules", "beam_rules"):
        results.append(min((measure(variant, args) for _ in range(args.repeat)), key=lambda r: r["seconds"]))
    # the reshard variants need decisions: take the loop's
    shutil.rmtree(args.pool + "_decisions", ignore_errors=True)
    shutil.copytree(os.path.join(args.work, "loop_rules", "decisions"), args.pool + "_decisions")
    for variant in ("loop_reshard", "beam_reshard"):
        results.append(min((measure(variant, args) for _ in range(args.repeat)), key=lambda r: r["seconds"]))
    summary = {"machine": f"{os.cpu_count()} cores, {platform_name()}", "recipe": args.recipe,
               "pool": args.pool, "results": results,
               "speedup_rules": round(results[1]["samples_per_s"] / results[0]["samples_per_s"], 2),
               "speedup_reshard": round(results[3]["samples_per_s"] / results[2]["samples_per_s"], 2)}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text)


def platform_name() -> str:
    import platform

    return f"{platform.machine()} {platform.processor() or ''} Python {platform.python_version()}".strip()


if __name__ == "__main__":
    main()

