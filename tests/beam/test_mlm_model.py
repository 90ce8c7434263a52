"""MLM-Filter's tiny model: checkpoint layout, the Llava-based loader, batching, the Beam ModelHandler
in RunInference, vLLM request construction and export.

Prompts, parsing and the stage without a model: tests/unit/test_mlm.py.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from beam_filter.errors import UserError
from beam_filter.models import mlm_prompts as P


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


# ---------------------------------------------------------------- checkpoint layout and loader
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
