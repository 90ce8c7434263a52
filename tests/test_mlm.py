"""MLM-Filter: reference prompts and parsing, the Llava-based loader, Beam RunInference, stage, presets."""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from beam_filter.errors import UserError  # noqa: E402
from beam_filter.models import mlm_prompts as P  # noqa: E402


# ---------------------------------------------------------------- fixtures
def jpeg(color, size=(48, 36)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


ELEMENTS = [
    (jpeg((200, 30, 30)), "a red car parked on the street"),
    (jpeg((30, 30, 200), (90, 40)), "a blue sky over the sea with some clouds at night"),
    (b"\xff\xd8not really a jpeg", "broken image"),
    (jpeg((10, 200, 10), (20, 70)), "fox"),
    (jpeg((120, 120, 0)), "the quick brown fox jumps over the lazy dog near a tall building"),
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from beam_filter.devtools.tiny_models import write_tiny_mlm

    return write_tiny_mlm(str(tmp_path_factory.mktemp("mlm") / "tiny"))


@pytest.fixture(scope="module")
def scorer(tiny_dir):
    from beam_filter.models.mlm_filter import load_mlm

    return load_mlm(tiny_dir, device="cpu")


# ---------------------------------------------------------------- prompts
def llava_mpt_render(system, roles, sep, user_text):
    """LLaVA's Conversation.get_prompt for SeparatorStyle.MPT, one user turn + open assistant turn."""
    out = system + sep
    for role, message in ((roles[0], user_text), (roles[1], None)):
        out += role + message + sep if message else role
    return out


def test_prompt_is_reference_chatml_rendering():
    caption = "a dog on a beach"
    text = P.render_prompt(caption, "image_text_matching")
    user = "<image>\n" + P.INSTRUCTION_TEMPLATE.format(
        caption=caption, criteria=P.CRITERIA["image_text_matching"], aspect="image text matching")
    assert text == llava_mpt_render("<|im_start|>system\nYou are a helpful assistant",
                                    ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>", user)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|><|im_start|>user\n"
                           "<image>\nText Caption: a dog on a beach\n\nPlease evaluate if the provided")
    assert text.endswith("avoiding any potential bias.<|im_end|><|im_start|>assistant\n")
    assert "avoiding the tendency to round to multiples of 5 or 10. Please first output a single line" in text


def test_each_metric_has_its_criteria_and_aspect():
    assert P.METRICS == ("image_text_matching", "object_detail_fulfillment", "caption_text_quality",
                         "semantic_understanding")
    fragments = {
        "image_text_matching": "capture its primary theme",
        "object_detail_fulfillment": "color, size, position, shape, material",
        "caption_text_quality": "Grammatical Correctness, Diversity of Vocabulary",
        "semantic_understanding": "6. Lastly, if the caption depicts relationships",
    }
    for metric, fragment in fragments.items():
        text = P.render_prompt("c", metric)
        assert fragment in text
        assert f"A higher score indicates higher level of {metric.replace('_', ' ')}." in text
        assert text.count("<image>") == 1


def test_caption_with_image_token_stays_text():
    before, after = P.prompt_parts("look <image> here", "semantic_understanding")
    assert "<image>" not in before and "Text Caption: look <image> here" in after


def test_start_end_variant():
    text = P.render_prompt("x", "caption_text_quality", mm_use_im_start_end=True)
    assert "<|im_start|>user\n<im_start><image><im_end>\nText Caption: x" in text


@pytest.mark.parametrize("text,expected", [
    ("85", 85), ("85\nThe caption is good", 85), (" 85 ", 85), ("85,", 85), (";85;", 85),
    (",85;", 85), (",,7", 7), ("100", 100), ("0", 0), ("-3", -3), ("1_0", 10),
    (";,85", None), ("", None), ("\n85", None), ("eighty", None), ("8 5", None), ("85.5", None),
    ("85%", None), (None, None),
])
def test_parse_score_edge_cases(text, expected):
    assert P.parse_score(text) == expected


def test_metric_names_and_aliases():
    assert P.canonical_metrics(["su", "itm", "image_text_matching"]) == (
        "image_text_matching", "semantic_understanding")
    assert P.canonical_metrics("odf,ctq") == ("object_detail_fulfillment", "caption_text_quality")
    with pytest.raises(UserError):
        P.canonical_metric("clip")
    with pytest.raises(UserError):
        P.canonical_metrics([])


# ---------------------------------------------------------------- checkpoint layout and loader
def test_weight_name_converter():
    from beam_filter.models.mlm_filter import convert_llava_key as c

    assert c("model.layers.3.self_attn.q_proj.bias") == "model.language_model.layers.3.self_attn.q_proj.bias"
    assert c("model.embed_tokens.weight") == "model.language_model.embed_tokens.weight"
    assert c("model.norm.weight") == "model.language_model.norm.weight"
    assert c("lm_head.weight") == "lm_head.weight"
    assert c("model.mm_projector.0.weight") == "model.multi_modal_projector.linear_1.weight"
    assert c("model.mm_projector.2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert c("model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight") == \
        "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert c("something.else") is None


def test_tiny_checkpoint_layout(tiny_dir):
    from safetensors import safe_open

    cfg = json.load(open(os.path.join(tiny_dir, "config.json")))
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_vision_select_layer"] == -2
    assert cfg["mm_vision_tower"] == "vision_tower" and cfg["model_type"] == "llava_qwen"
    with safe_open(os.path.join(tiny_dir, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.mm_projector.0.weight" in names and "model.layers.0.self_attn.q_proj.bias" in names
    with safe_open(os.path.join(tiny_dir, "vision_tower", "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    vcfg = json.load(open(os.path.join(tiny_dir, "vision_tower", "config.json")))
    assert vcfg["model_type"] == "siglip"
    assert os.path.exists(os.path.join(tiny_dir, "vision_tower", "preprocessor_config.json"))


def test_loaded_model_is_transformers_llava(scorer):
    from transformers import LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    m = scorer.model
    assert isinstance(m, LlavaForConditionalGeneration)
    assert isinstance(m.config.text_config, Qwen2Config)
    assert isinstance(m.config.vision_config, SiglipVisionConfig)
    assert m.config.vision_feature_select_strategy == "full"
    assert scorer.image_seq_length == (56 // 14) ** 2
    assert scorer.image_token_id == len(scorer.tokenizer)   # outside the tokenizer's ids


def test_chat_template_renders_the_same_text(scorer):
    msg = P.user_message("a cat", "object_detail_fulfillment")
    rendered = scorer.tokenizer.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                                    add_generation_prompt=True)
    assert rendered == P.render_prompt("a cat", "object_detail_fulfillment")


def test_prompt_ids_tokenise_around_the_placeholder(scorer):
    ids = scorer.prompt_ids("a red car", "image_text_matching")
    assert ids.count(scorer.image_token_id) == 1 and ids[-1] == scorer.whitespace_id
    i = ids.index(scorer.image_token_id)
    text = scorer.tokenizer.decode(ids[:i]) + "<image>" + scorer.tokenizer.decode(ids[i + 1:-1])
    assert text == P.render_prompt("a red car", "image_text_matching")
    assert scorer.tokenizer.decode([scorer.whitespace_id]) == " "
    assert len(scorer.prompt_ids("a red car", "image_text_matching", max_len=40)) == 41


def test_device_and_precision_errors(tiny_dir):
    import torch

    from beam_filter.models.mlm_filter import load_mlm

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            load_mlm(tiny_dir, device="cuda")
    with pytest.raises(UserError, match="fp16"):
        load_mlm(tiny_dir, device="cpu", precision="fp16")
    with pytest.raises(UserError):
        load_mlm(os.path.join(tiny_dir, "vision_tower", "nope"), device="cpu")


def test_batching_with_left_padding_matches_one_by_one(scorer):
    from beam_filter.models.mlm_filter import decode_image

    good = [(decode_image(b), c) for b, c in ELEMENTS if decode_image(b) is not None]
    batched = scorer.score_texts([g[0] for g in good], [g[1] for g in good], "image_text_matching")
    single = [scorer.score_texts([im], [c], "image_text_matching")[0] for im, c in good]
    assert batched == single
    assert len(set(batched)) > 1          # the answer depends on the input


def test_bf16_on_cpu_runs(tiny_dir):
    import torch

    from beam_filter.models.mlm_filter import decode_image, load_mlm

    s = load_mlm(tiny_dir, device="cpu", precision="bf16")
    assert s.model.dtype == torch.bfloat16
    out = s.score_texts([decode_image(ELEMENTS[0][0])], [ELEMENTS[0][1]], "semantic_understanding")
    assert isinstance(out[0], str)


# ---------------------------------------------------------------- Beam RunInference
def test_handler_in_a_real_beam_pipeline(tiny_dir):
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.testing.util import assert_that

    from beam_filter.models.mlm_filter import MLMFilterModelHandler

    handler = MLMFilterModelHandler(tiny_dir, metrics=["su", "itm"], device="cpu", batch_size=2)

    def check(results):
        results = sorted(results, key=lambda r: r.example[1])
        assert len(results) == len(ELEMENTS)
        for r in results:
            out = r.inference
            assert set(out) == {"image_text_matching", "semantic_understanding", "error"}
            if r.example[1] == "broken image":
                assert out == {"image_text_matching": None, "semantic_understanding": None,
                               "error": "corrupt_image"}
            else:
                assert out["error"] is None
                for m in ("image_text_matching", "semantic_understanding"):
                    assert out[m] is None or isinstance(out[m], int)
        assert any(isinstance(r.inference["semantic_understanding"], int) for r in results)

    with beam.Pipeline(runner=BundleBasedDirectRunner(), options=PipelineOptions()) as p:
        got = p | beam.Create(ELEMENTS) | RunInference(handler)
        assert_that(got, check)


# ---------------------------------------------------------------- stage
def build(params, stage_id="mlm"):
    from beam_filter.registry import build_stage

    return build_stage(stage_id, "mlm", params)


def test_stage_thresholds_and_reasons():
    s = build({"thresholds": {"itm": 66, "object_detail_fulfillment": 20}})
    assert s.scored == ("image_text_matching", "object_detail_fulfillment")
    row = {"mlm_image_text_matching_score": 70, "mlm_object_detail_fulfillment_score": 20}
    assert s.reason(row) is None
    assert s.reason({**row, "mlm_image_text_matching_score": 65}) == "mlm_image_text_matching_below_threshold"
    assert s.reason({**row, "mlm_object_detail_fulfillment_score": 19}) == \
        "mlm_object_detail_fulfillment_below_threshold"
    assert s.reason({**row, "mlm_object_detail_fulfillment_score": None}) == "mlm_unparsable"
    assert s.reason({**row, "mlm_image_text_matching_score": float("nan")}) == "mlm_unparsable"
    with pytest.raises(UserError, match="missing"):
        s.reason({"mlm_image_text_matching_score": 70})


def test_stage_shorthand_columns_and_errors():
    s = build({"metric": "su", "threshold": 85}, stage_id="mlm_su")
    assert s.scored == ("semantic_understanding",)
    assert s.reason({"mlm_su_semantic_understanding_score": 85}) is None
    assert s.reason({"mlm_su_semantic_understanding_score": 84}) == \
        "mlm_semantic_understanding_below_threshold"
    assert build({}).scored == P.METRICS and build({}).reason({}) is None
    cols = build({"metric": "su", "threshold": 1}).model_columns(
        {"semantic_understanding": None, "error": "corrupt_image"})
    assert cols == {"mlm_semantic_understanding_score": None, "read_error": "corrupt_image"}
    for bad in ({"threshold": 85}, {"metric": "su"}, {"metric": "su", "threshold": 1, "fraction": 0.5},
                {"thresholds": {"su": 1}, "metric": "su", "threshold": 2}, {"thresholds": {"su": "x"}},
                {"metric": "su", "threshold": 1, "metrics": ["itm"]}, {"metric": "nope", "threshold": 1},
                {"backend": "onnx"}, {"fraction": 1.5, "metric": "su"}):
        with pytest.raises(UserError):
            build(bad)


def test_stage_handlers_and_score_config(tmp_path):
    from beam_filter.models.mlm_filter import MLMFilterModelHandler
    from beam_filter.models.mlm_vllm import MLMVLLMModelHandler

    s = build({"metric": "su", "threshold": 85, "device": "cpu"})
    h = s.model_handler()
    assert isinstance(h, MLMFilterModelHandler) and h.metrics == ("semantic_understanding",)
    assert isinstance(build({"backend": "vllm"}).model_handler(), MLMVLLMModelHandler)
    # a threshold change must not invalidate the scores on disk; a metric change must
    assert build({"metric": "su", "threshold": 80}).score_config() == \
        build({"metric": "su", "threshold": 85}).score_config()
    assert build({"metric": "itm", "threshold": 85}).score_config() != s.score_config()
    params = type(s).test_model_params(str(tmp_path))
    assert params["model"].startswith(str(tmp_path)) and params["device"] == "cpu"


# ---------------------------------------------------------------- vLLM (request construction only)
def test_vllm_requests_and_missing_vllm(scorer):
    from beam_filter.models.mlm_filter import PromptBuilder, decode_image
    from beam_filter.models.mlm_vllm import MLMVLLMModelHandler, build_requests, sampling_kwargs

    prompts = PromptBuilder(scorer.tokenizer, scorer.image_token_id)
    images = [decode_image(b) for b, _ in ELEMENTS[:2]]
    reqs = build_requests(prompts, images, [c for _, c in ELEMENTS[:2]], "caption_text_quality")
    assert [r["multi_modal_data"]["image"] for r in reqs] == images
    for r, (_, caption) in zip(reqs, ELEMENTS[:2]):
        assert r["prompt_token_ids"] == scorer.prompt_ids(caption, "caption_text_quality")
    assert sampling_kwargs(3) == {"temperature": 0.0, "max_tokens": 3, "n": 1, "skip_special_tokens": True}
    with pytest.raises(UserError):
        MLMVLLMModelHandler(device="cpu")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="vllm"):
            MLMVLLMModelHandler("x/y").load_model()


def test_export_for_vllm_is_a_plain_transformers_llava(scorer, tmp_path):
    """The directory vLLM loads: transformers' own from_pretrained gives the same answers."""
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from beam_filter.models.mlm_filter import decode_image, export_hf_llava

    d = export_hf_llava(scorer, str(tmp_path / "hf"))
    model = LlavaForConditionalGeneration.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_id == scorer.image_token_id
    image, caption = decode_image(ELEMENTS[0][0]), ELEMENTS[0][1]
    ids = torch.tensor([scorer.expand_image(scorer.prompt_ids(caption, "semantic_understanding"))])
    pixels = scorer.pixel_values([image])
    with torch.inference_mode():
        a = model(input_ids=ids, pixel_values=pixels).logits[0, -1]
        b = scorer.model(input_ids=ids, pixel_values=pixels).logits[0, -1]
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- end to end through the CLI
def write_pool(directory, n=10):
    """One small webdataset shard: jpg/txt/json per key, one corrupt image."""
    import hashlib

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "00000000.tar")
    with tarfile.open(path, "w") as t:
        for i in range(n):
            key = f"{i:09d}"
            img = b"\xff\xd8broken" if i == 3 else jpeg(((37 * i) % 256, (91 * i) % 256, 60), (64 + i, 48))
            cap = f"a photo number {i} of a red car near the sea".encode()
            meta = json.dumps({"uid": hashlib.md5(key.encode()).hexdigest(), "url": f"http://x/{i}",
                               "caption": cap.decode()}).encode()
            for ext, data in (("jpg", img), ("txt", cap), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    write_pool.uids = [hashlib.md5(f"{i:09d}".encode()).hexdigest() for i in range(n)]
    return path


def test_presets_end_to_end_with_test_models(tmp_path):
    pytest.importorskip("beam_filter.cli")
    import numpy as np
    import pyarrow.parquet as pq

    from beam_filter.cli import main

    pool = str(tmp_path / "pool")
    write_pool(pool)
    models = str(tmp_path / "models")
    from beam_filter.stages.mlm import MLMFilter

    MLMFilter.write_test_model(models)        # only this recipe's model (make-test-models writes all)
    assert os.path.isdir(os.path.join(models, "mlm_filter_tiny"))

    def run(recipe, *extra):
        out = str(tmp_path / f"out_{recipe}")
        assert main(["run", "--recipe", recipe, "--input", f"{pool}/*.tar", "--output", out,
                     "--test-models", models, "--no-progress", *extra]) == 0
        rows = []
        for f in sorted(glob.glob(os.path.join(out, "decisions", "*.parquet"))):
            rows.extend(pq.read_table(f).to_pylist())
        return rows

    dfn = str(tmp_path / "dfn.npy")
    listed = write_pool.uids[5]
    np.save(dfn, np.array([(int(listed[:16], 16), int(listed[16:], 16))], dtype="u8,u8"))
    # one run covers the mlm stage inside a union, uid_subset and exact dedup
    rows = run("open_qwen2vl", "--set", f"dfn_or_mlm.dfn.path={dfn}")
    assert len(rows) == 10
    by_key = {r["key"]: r for r in rows}
    assert by_key["000000003"]["reason"] == "corrupt_image"
    su = "mlm_semantic_understanding_below_threshold"
    for r in rows:
        if r["key"] == "000000003":
            continue
        score = r["mlm_semantic_understanding_score"]
        mlm_keeps = score is not None and score >= 85
        assert r["kept"] == (mlm_keeps or r["uid"] == listed), r
        if not r["kept"]:
            assert r["reason"] == "none_of:not_in_uid_subset|" + (
                "mlm_unparsable" if score is None else su)
    assert by_key["000000005"]["kept"]
