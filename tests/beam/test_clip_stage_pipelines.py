"""The ``clip`` stage in Beam pipelines: its columns equal the handler's outputs; its thresholds
follow the rank-n rule."""

from __future__ import annotations

import io
import json
import os

import apache_beam as beam
import numpy as np
import pytest

from beam_filter.records import Sample
from beam_filter.registry import build_stage

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (48 + seed, 80, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    from beam_filter.stages.clip import ClipStage

    d = str(tmp_path_factory.mktemp("clip_models"))
    ClipStage.write_test_model(d)
    params = ClipStage.test_model_params(d)
    return build_stage("clip", "clip", {**params, "batch_size": 4, "draft": False})


def _samples():
    caps = ["a red square", "two dogs on a beach", "", "a city at night", "text", "blue sky"]
    out = [Sample(shard="s.tar", key=f"{i:04d}", uid=f"{i:032x}", image=_jpeg(i), caption=c)
           for i, c in enumerate(caps)]
    out.append(Sample(shard="s.tar", key="9999", uid="f" * 32, image=b"not a jpeg", caption="broken"))
    return out


def test_columns_in_beam_equal_the_handler(tiny_stage, tmp_path):
    """RunInference over the stage's own hooks gives exactly the handler's per-example outputs."""
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    stage = tiny_stage
    samples = _samples()
    handler = stage.model_handler()
    direct = handler.run_inference([stage.model_input(s) for s in samples], handler.load_model())
    out = str(tmp_path / "cols.npz")

    def save(pairs):
        flat = {}
        for key, cols in pairs:
            for name, value in cols.items():
                flat[f"{key}|{name}"] = np.asarray(value)
        np.savez(out, **flat)

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        (p | beam.Create(samples, reshuffle=False)
         | beam.Map(lambda s: (s.key, stage.model_input(s)))
         | RunInference(KeyedModelHandler(stage.model_handler()))
         | beam.MapTuple(lambda key, inference: (key, stage.model_columns(inference)))
         | beam.combiners.ToList() | beam.Map(save))

    got = np.load(out, allow_pickle=False)
    for s, d in zip(samples, direct):
        if d["error"]:
            assert str(got[f"{s.key}|read_error"]) == "corrupt_image"
            assert f"{s.key}|clip_score" not in got
            continue
        cols = stage.model_columns(d)
        assert cols["clip_image_embedding"].dtype == np.float32 and cols["clip_image_embedding"].ndim == 1
        for name in ("clip_score", "clip_flipped_score", "clip_image_embedding", "clip_text_embedding"):
            np.testing.assert_allclose(got[f"{s.key}|{name}"], cols[name], rtol=0, atol=1e-6)
        assert cols["clip_score"] == pytest.approx(float(cols["clip_image_embedding"] @ cols["clip_text_embedding"]),
                                                   abs=1e-5)
        assert cols["clip_score"] == d["score"] and cols["clip_flipped_score"] == d["flipped_score"]


def _rows(rng, n=400):
    score = np.round(rng.normal(0.25, 0.05, n), 2)          # ties
    flipped = np.round(score - rng.random(n) * 0.05, 2)
    return [{"uid": f"{i:032x}", "key": f"{i:05d}", "read_error": None, "clip_score": float(a),
             "clip_flipped_score": float(b), "clip_b32_similarity_score": float(a) + 1}
            for i, (a, b) in enumerate(zip(score, flipped))]


def test_select_fraction_threshold_and_flipped(tmp_path):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from beam_filter.transforms.select import ApplyStages

    rows = _rows(np.random.default_rng(0))
    rows[3]["read_error"] = "corrupt_image"
    alive = [r for r in rows if r["read_error"] is None]
    stages = {
        "fraction": build_stage("clip", "clip", {"fraction": 0.3}),
        "flipped": build_stage("clip", "clip", {"fraction": 0.2, "filter_on": "flipped_score"}),
        "threshold": build_stage("clip", "clip", {"threshold": 0.27}),
        "score_only": build_stage("clip", "clip", {}),
    }
    out = str(tmp_path)

    def writer(name):
        def write(kept):
            with open(os.path.join(out, f"{name}.json"), "w") as f:
                json.dump(sorted(kept), f)
        return write

    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([])) as p:
        pc = p | beam.Create(rows, reshuffle=False)
        for name, stage in stages.items():
            (pc | f"Copy[{name}]" >> beam.Map(dict)
             | f"Select[{name}]" >> ApplyStages([stage], info_dir=os.path.join(out, name))
             | f"Reasons[{name}]" >> beam.Map(lambda r: [r["uid"], r["reason"]])
             | f"List[{name}]" >> beam.combiners.ToList() | f"Write[{name}]" >> beam.Map(writer(name)))

    def reference(col, fraction=None, threshold=None):
        v = np.array([r[col] for r in alive])
        if fraction is not None:
            threshold = -np.sort(-v)[int(len(v) * fraction)]
        return {r["uid"] for r in alive if r[col] >= threshold}

    def result(name):
        with open(os.path.join(out, f"{name}.json")) as f:
            return dict(map(tuple, json.load(f)))

    want = {"fraction": reference("clip_score", fraction=0.3),
            "flipped": reference("clip_flipped_score", fraction=0.2),
            "threshold": reference("clip_score", threshold=0.27),
            "score_only": {r["uid"] for r in alive}}
    reasons = {"fraction": "clip_score_below_threshold", "flipped": "clip_flipped_score_below_threshold",
               "threshold": "clip_score_below_threshold"}
    for name, kept in want.items():
        got = result(name)
        assert {u for u, why in got.items() if why is None} == kept, name
        assert got[rows[3]["uid"]] == "corrupt_image"
        assert {why for u, why in got.items() if why and u != rows[3]["uid"]} <= {reasons.get(name)}
    with open(os.path.join(out, "fraction", "clip.json")) as f:
        info = json.load(f)
    v = np.array([r["clip_score"] for r in alive])
    assert info["threshold"] == -np.sort(-v)[int(len(v) * 0.3)] and info["N"] == len(alive)
