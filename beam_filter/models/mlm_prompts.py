"""MLM-Filter prompts and score parsing: the method's specification, as plain text and pure functions.

The prompt strings below are the MLM-Filter method itself (a fine-tuned multimodal
LM only gives meaningful scores for the exact instructions it was trained on), so
they are reproduced verbatim from the reference scoring code:

* instruction template and the four criteria: ``mlm_filter_scoring_datacomp_batch_inference_v2.py``
  in github.com/Victorwz/MLM_Filter (MIT licence), the script the authors use for the
  Qwen2.5 / Llama-3 generation of models (``weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o``).
  The older single-image script differs by one sentence ("multiples of 10.  Please");
  the v2 text is the one that goes with the Qwen2.5 checkpoint.
* chat template: ``conv_qwen_instruct`` in ``llava/conversation.py`` of
  github.com/Victorwz/LLaVA-Unified (Apache-2.0), the conversation mode v2 picks for
  Qwen models. It is ChatML rendered with LLaVA's ``SeparatorStyle.MPT``: NO newline
  after ``<|im_end|>`` (unlike Qwen's own chat template), and the system prompt
  "You are a helpful assistant" without a final period.
* the input ids get one extra whitespace token after the assistant header (v2's
  collator: "directly add 220 whitespace"), so the model's first new token is a digit.
* parsing: ``above_threshold_decision`` in Open-Qwen2VL's
  ``data_filtering/baselines/apply_filter.py`` (github.com/Victorwz/Open-Qwen2VL):
  first line, ``.strip(",").strip(";")``, ``int(...)``; anything else rejects.
"""

from __future__ import annotations

from beam_filter.errors import UserError

IMAGE_TOKEN = "<image>"            # LLaVA's DEFAULT_IMAGE_TOKEN: where the image features go
IM_START_TOKEN = "<im_start>"      # LLaVA's DEFAULT_IM_START_TOKEN (only with mm_use_im_start_end)
IM_END_TOKEN = "<im_end>"
IM_PATCH_TOKEN = "<im_patch>"      # added to the tokenizer by LLaVA's loader (mm_use_im_patch_token)

# The four metrics, in the reference's order.
METRICS = (
    "image_text_matching",
    "object_detail_fulfillment",
    "caption_text_quality",
    "semantic_understanding",
)

# Short names accepted in recipes and --set (the paper's abbreviations).
METRIC_ALIASES = {
    "itm": "image_text_matching",
    "odf": "object_detail_fulfillment",
    "ctq": "caption_text_quality",
    "su": "semantic_understanding",
}

INSTRUCTION_TEMPLATE = """Text Caption: {caption}

{criteria} A higher score indicates higher level of {aspect}. Ensure that your scoring is nuanced and uses the entire range from 0 to 100, reflecting the subtle differences. The score should be given as an integer, with each number between 0 and 100 considered as a potential score, avoiding the tendency to round to multiples of 5 or 10. Please first output a single line containing the value indicating the scores. In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias."""

CRITERIA = {
    "image_text_matching": "Please evaluate if the provided text caption accurately represents the main features and objects of the image. The caption doesn't need to detail every aspect of the image, but it should capture its primary theme. Rate the overall quality of the text caption's match to the image on a scale of 1-100, considering the criteria mentioned.",
    "object_detail_fulfillment": "Please evaluate the text caption to determine if it provides detailed descriptions of objects that align with the image. Specifically, assess if the caption sufficiently describes the color, size, position, shape, material, etc., of the objects. Afterward, rate the caption's overall accuracy in capturing object details from the image on a scale of 1-100, based on the criteria provided.",
    "caption_text_quality": "Please evaluate the text caption based on the following criteria: Grammatical Correctness, Diversity of Vocabulary (e.g., the range and uniqueness of words used), Fluency (e.g., smoothness and natural flow of sentences), Readability, Length, and Structure. Assign an overall quality score on a scale of 1-100.",
    "semantic_understanding": """Evaluate the given text caption in relation to its corresponding image. Your goal is to determine if the text caption provides additional semantic information that isn't readily apparent just from the image itself.

For example:

1. If the image mentions "a man" but the caption elaborates he is a "homeless man" or a "businessman," then the caption is enriching the semantic context.
2. If the caption introduces concepts like the mathematical tangent function, which require in-depth knowledge to deduce, it is imparting external semantics.
3. Captions revealing specific location addresses, festival details, or other nuanced data not easy to infer from the image also provide external semantic information.
4. Directly identifying specific entities in the image such as buildings, people, bird species, animal breeds, car models, engines, etc., in the caption introduces additional insights.
5. Should the image act as a contextual backdrop and the caption describes elements not explicitly showcased in the image, it has semantic depth.
6. Lastly, if the caption depicts relationships between the subjects in the image, which need commonsense knowledge to understand, it should be considered semantically rich.

Please assess and determine the extent of semantic enrichment the caption provides over the image. Rate the text caption's semantic depth on a scale from 1 to 100.""",
}

# conv_qwen_instruct (LLaVA-Unified): system, roles and separator of the ChatML rendering.
SYSTEM = "<|im_start|>system\nYou are a helpful assistant"
USER_ROLE = "<|im_start|>user\n"
ASSISTANT_ROLE = "<|im_start|>assistant\n"
SEP = "<|im_end|>"

# Jinja chat template that renders the same text as render_prompt (saved with the tiny
# test tokenizer so `apply_chat_template` and our renderer can be checked against each other).
CHAT_TEMPLATE = (
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The reference default for Qwen models is 2 new tokens. Qwen's tokenizer splits numbers
# into single digits, so 2 tokens turn a score of 100 into "10"; 3 tokens read every score
# 0..100 whole and change nothing else under greedy decoding. max_new_tokens=2 reproduces
# the reference byte for byte.
DEFAULT_MAX_NEW_TOKENS = 3
# v2 truncates the tokenised prompt (image placeholder included) to this many ids.
DEFAULT_MAX_LEN = 2040


def canonical_metric(name: str) -> str:
    """Full metric name for ``name`` (a full name or an alias such as ``su``); UserError otherwise."""
    key = str(name).strip().lower()
    key = METRIC_ALIASES.get(key, key)
    if key not in CRITERIA:
        raise UserError(
            f"unknown MLM-Filter metric {name!r}: use one of {', '.join(METRICS)} "
            f"(or {', '.join(sorted(METRIC_ALIASES))})")
    return key


def canonical_metrics(names) -> tuple[str, ...]:
    """Validated, de-duplicated metrics in the reference's order (so outputs are deterministic)."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    chosen = {canonical_metric(n) for n in names}
    if not chosen:
        raise UserError("mlm: at least one metric is needed")
    return tuple(m for m in METRICS if m in chosen)


def instruction(caption: str, metric: str) -> str:
    """The user instruction for one caption and metric (without the image token)."""
    metric = canonical_metric(metric)
    return INSTRUCTION_TEMPLATE.format(
        caption=caption, criteria=CRITERIA[metric], aspect=metric.replace("_", " "))


def prompt_parts(caption: str, metric: str, mm_use_im_start_end: bool = False) -> tuple[str, str]:
    """The chat text before and after the image placeholder ``<image>``.

    Split here rather than by searching the text, so a caption that itself contains
    ``<image>`` stays plain text (LLaVA's ``tokenizer_image_token`` would make it a
    second image slot).
    """
    before = SYSTEM + SEP + USER_ROLE + (IM_START_TOKEN if mm_use_im_start_end else "")
    after = ((IM_END_TOKEN if mm_use_im_start_end else "") + "\n" + instruction(caption, metric)
             + SEP + ASSISTANT_ROLE)
    return before, after


def user_message(caption: str, metric: str, mm_use_im_start_end: bool = False) -> str:
    """The user turn: image placeholder, newline, instruction (LLaVA's first-message layout)."""
    image = (IM_START_TOKEN + IMAGE_TOKEN + IM_END_TOKEN) if mm_use_im_start_end else IMAGE_TOKEN
    return image + "\n" + instruction(caption, metric)


def render_prompt(caption: str, metric: str, mm_use_im_start_end: bool = False) -> str:
    """The full chat text fed to the model, up to and including the assistant header."""
    before, after = prompt_parts(caption, metric, mm_use_im_start_end)
    return before + IMAGE_TOKEN + after


def parse_score(text: str | None) -> int | None:
    """The integer score in a generated answer, or None when there is none.

    Matches the reference exactly: keep the first line, strip leading/trailing ``,``
    then ``;`` (in that order, as ``str.strip(",").strip(";")``), and parse with
    ``int`` (which also accepts surrounding whitespace and a sign). Anything ``int``
    refuses is unparsable; the stage drops such rows with reason ``mlm_unparsable``.
    """
    if text is None:
        return None
    first = str(text).split("\n")[0]
    first = first.strip(",").strip(";")
    try:
        return int(first)
    except ValueError:
        return None
