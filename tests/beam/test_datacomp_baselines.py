"""DataComp baselines through the select transforms vs an independent implementation.

The reference side (the ``datacomp_meta`` fixture's DataCompReference, tests/conftest.py)
re-implements baselines.py's rules in a few lines of pandas/numpy, calling fastText, gcld3 and
numpy directly -- it never imports the beam_filter rule or stage code under test. Every baseline
must select the same uid set.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam

from beam_filter.recipe import load_recipe, parse_recipe
from beam_filter.transforms.metadata import ReadDataCompMetadata


RECIPES = {
    "basic": ("datacomp_basic", []),
    "clip_l14_30pct": ("datacomp_clip_l14_30pct", []),
    "clip_b32_th025": ("datacomp_b32_th025", []),
    "laion2b": ("laion2b", []),
    "image_based": ("image_based", "overrides"),
    "intersect": ("image_based_intersect_clip_score", "overrides"),
}
CUSTOM = {
    "clip_b32_10pct": {"name": "b", "stages": [{"c": {"type": "clip", "model": "ViT-B-32", "fraction": 0.1}}]},
    "clip_l14_th022": {"name": "l", "stages": [{"c": {"type": "clip", "model": "ViT-L-14", "threshold": 0.22}}]},
    "text_based": {"name": "t", "stages": [{"text_based": {}}]},
}


def _kept_writer(directory, name):
    def write(uids):
        with open(os.path.join(directory, f"{name}.json"), "w") as f:
            json.dump(sorted(uids), f)
    return write


def test_baselines_match_reference(datacomp_meta, tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from beam_filter.transforms.select import ApplyStages

    d, ref, cents, targets = datacomp_meta.dir, datacomp_meta.ref, datacomp_meta.centroids, datacomp_meta.targets
    recipes = {name: load_recipe(preset, datacomp_meta.overrides if extra else [])
               for name, (preset, extra) in RECIPES.items()}
    recipes.update({name: parse_recipe(raw) for name, raw in CUSTOM.items()})
    out = str(tmp_path)
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        rows = (p | ReadDataCompMetadata(os.path.join(d, "metadata"), embeddings=["l14_img"])
                | beam.Map(lambda r: {**r, "key": r["uid"], "read_error": None}))
        for name, recipe in recipes.items():
            (rows | f"Select[{name}]" >> ApplyStages(recipe.stages)
             | f"Kept[{name}]" >> beam.FlatMap(lambda r: [r["uid"]] if r["kept"] else [])
             | f"List[{name}]" >> beam.combiners.ToList()
             | f"Write[{name}]" >> beam.Map(_kept_writer(out, name)))

    def got(name):
        with open(os.path.join(out, f"{name}.json")) as f:
            return set(json.load(f))

    want = {
        "basic": ref.basic(),
        "clip_l14_30pct": ref.clip_score("l14", fraction=0.3),
        "clip_b32_th025": ref.clip_score("b32", threshold=0.25),
        "laion2b": ref.laion2b(),
        "image_based": ref.image_based(cents, targets),
        "intersect": ref.clip_score("l14", fraction=0.3) & ref.image_based(cents, targets),
        "clip_b32_10pct": ref.clip_score("b32", fraction=0.1),
        "clip_l14_th022": ref.clip_score("l14", threshold=0.22),
        "text_based": ref.text_based(),
    }
    for name, mask in want.items():
        expected = ref.uids(mask)
        assert 0 < len(expected) < datacomp_meta.rows, name         # every rule both keeps and drops
        assert got(name) == expected, name
