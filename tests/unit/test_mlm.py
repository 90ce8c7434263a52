"""MLM-Filter without a model: the reference prompts and score parsing, checkpoint key names, the stage.

The tiny model, its loader and the Beam ModelHandler: tests/beam/test_mlm_model.py; the presets
through the CLI: tests/e2e/test_mlm_presets.py.
"""

from __future__ import annotations

import pytest

from beam_filter.errors import UserError
from beam_filter.models import mlm_prompts as P


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


# ---------------------------------------------------------------- checkpoint key names
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
