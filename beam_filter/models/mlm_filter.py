"""MLM-Filter scorer: load a LLaVA-style checkpoint into transformers' Llava classes and score pairs.

The published checkpoint (``weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o``) is in the
LLaVA-Unified layout, not in transformers' ``llava`` layout:

* ``config.json`` is a Qwen2 config plus LLaVA's ``mm_*`` keys (``mm_vision_tower``
  = ``google/siglip-so400m-patch14-384``, ``mm_hidden_size``, ``mm_projector_type`` =
  ``mlp2x_gelu``, ``mm_vision_select_layer`` = -2, ``mm_vision_select_feature`` = ``patch``,
  ``mm_use_im_start_end``, ``mm_use_im_patch_token``, ``unfreeze_mm_vision_tower``);
* weights: ``model.embed_tokens/layers/norm`` and ``lm_head`` (the LLM),
  ``model.mm_projector.{0,2}`` (Linear, GELU, Linear);
* the vision tower is NOT taken from the checkpoint: LLaVA's loader builds it lazily
  and loads it from ``mm_vision_tower`` (weights *and* image processor), unless
  ``unfreeze_mm_vision_tower`` is set, in which case ``model.vision_tower.vision_tower.*``
  in the checkpoint override it. We follow the same rule.

We use transformers' native ``LlavaForConditionalGeneration`` (``SiglipVisionConfig`` +
``Qwen2Config``, ``vision_feature_select_strategy="full"``: SigLIP has no CLS token, and
LLaVA's ``patch`` feature on SigLIP keeps every token of hidden layer -2), and a small
name converter of our own (:func:`convert_llava_key`) from the layout above. The image
goes in as ``image_seq_length`` placeholder tokens whose id is one past the tokenizer's
vocabulary (an embedding row the checkpoint has but the tokenizer never produces), and a
logits processor keeps generation inside the tokenizer's vocabulary, which is what
LLaVA's ``resize_token_embeddings(len(tokenizer))`` does in the reference.

Differences from the reference script, on purpose:
* batches use an attention mask (the reference attends to its left padding, so its
  scores depend on which captions share a batch);
* a caption that itself contains ``<image>`` stays text (the reference would split it
  into a second image slot);
* ``max_new_tokens`` defaults to 3 (see ``mlm_prompts.DEFAULT_MAX_NEW_TOKENS``).
Images are resized to the tower's square size without padding, as the reference
scoring scripts do (``image_processor(images)``; their ``image_aspect_ratio`` is unused).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import io
import json
import logging
import os
from typing import Any, Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_filter.errors import UserError
from beam_filter.fsio import is_remote
from beam_filter.models import mlm_prompts as P
from beam_filter.models.base import resolve_device
from beam_filter.models.checkpoints import checkpoint_problem, resolve_model_dir

DEFAULT_MODEL = "weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o"
CORRUPT_IMAGE = "corrupt_image"

_LOG = logging.getLogger(__name__)
_VISION_ONLY_PREFIXES = ("embeddings.", "encoder.", "post_layernorm.", "head.")

# config.json keys that belong to LLaVA, not to the Qwen2 text config.
_LLAVA_KEYS = ("mm_", "image_aspect_ratio", "tokenizer_", "tune_", "freeze_", "unfreeze_",
               "use_mm_proj", "architectures", "model_type", "_name_or_path", "auto_map")


# --------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class MLMLayout:
    """What a LLaVA-Unified ``config.json`` says about the multimodal parts."""

    text_config: dict
    vision_tower: str
    mm_hidden_size: int
    projector_type: str
    select_layer: int
    select_feature: str
    use_im_start_end: bool
    use_im_patch_token: bool
    unfreeze_vision_tower: bool

    @classmethod
    def from_config(cls, cfg: dict, where: str = "config.json") -> "MLMLayout":
        if "mm_vision_tower" not in cfg and "vision_tower" not in cfg:
            raise UserError(f"{where}: no mm_vision_tower key; not an MLM-Filter (LLaVA) checkpoint")
        projector = cfg.get("mm_projector_type", "linear")
        if projector != "mlp2x_gelu":
            raise UserError(f"{where}: mm_projector_type={projector!r} is not supported "
                            "(MLM-Filter checkpoints use mlp2x_gelu)")
        feature = cfg.get("mm_vision_select_feature", "patch")
        if feature != "patch":
            raise UserError(f"{where}: mm_vision_select_feature={feature!r} is not supported (patch)")
        text = {k: v for k, v in cfg.items() if not k.startswith(_LLAVA_KEYS)}
        return cls(
            text_config=text,
            vision_tower=cfg.get("mm_vision_tower") or cfg["vision_tower"],
            mm_hidden_size=int(cfg["mm_hidden_size"]),
            projector_type=projector,
            select_layer=int(cfg.get("mm_vision_select_layer", -2)),
            select_feature=feature,
            use_im_start_end=bool(cfg.get("mm_use_im_start_end", False)),
            # LLaVA's builder defaults this one to True when the key is absent.
            use_im_patch_token=bool(cfg.get("mm_use_im_patch_token", True)),
            unfreeze_vision_tower=bool(cfg.get("unfreeze_mm_vision_tower", False)),
        )


def convert_llava_key(name: str) -> str | None:
    """LLaVA-Unified weight name -> transformers ``LlavaForConditionalGeneration`` name (None: unused)."""
    if name.startswith("model.mm_projector."):
        index, param = name[len("model.mm_projector."):].split(".", 1)
        layer = {"0": "linear_1", "2": "linear_2"}.get(index)
        return None if layer is None else f"model.multi_modal_projector.{layer}.{param}"
    if name.startswith("model.vision_tower.vision_tower."):
        return "model.vision_tower." + name[len("model.vision_tower.vision_tower."):]
    if name.startswith("model.vision_tower.") or name.startswith("model.vision_resampler."):
        return None
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    if name.startswith("lm_head."):
        return name
    return None


# --------------------------------------------------------------------------- files
def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def resolve_checkpoint(model: str, base_dir: str | None = None) -> str:
    """Local directory holding ``model``: a path, a gs://... directory, or a hub id
    (models/checkpoints.py, shared with the other Hugging Face-style models)."""
    return resolve_model_dir(model, SET_MODEL_HINT, base_dir=base_dir)


SET_MODEL_HINT = "set the mlm stage's model parameter to a checkpoint directory (--set mlm.model=DIR)"
# The recipe check (stages/mlm.py) asks before any model library is imported.
local_checkpoint_problem = checkpoint_problem


def hub_cache_problem(model: str) -> str | None:
    """With ``HF_HUB_OFFLINE`` set, a hub id whose files are not in the local cache cannot
    load; say so before the job starts. None when online (the fetch may work) or cached."""
    if is_remote(model) or os.path.exists(model) or local_checkpoint_problem(model):
        return None
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return None
    if not constants.HF_HUB_OFFLINE:
        return None
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    return "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"


def _load_weights(directory: str) -> dict:
    """All tensors of a checkpoint directory (safetensors preferred, else torch .bin)."""
    import torch

    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if files:
        from safetensors.torch import load_file

        out: dict = {}
        for f in files:
            out.update(load_file(f))
        return out
    files = sorted(glob.glob(os.path.join(directory, "pytorch_model*.bin")))
    if not files:
        raise UserError(f"no weights (*.safetensors or pytorch_model*.bin) in {directory}")
    out = {}
    for f in files:
        out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def _vision_config(vision_dir: str):
    from transformers import SiglipVisionConfig

    cfg = _read_json(os.path.join(vision_dir, "config.json"))
    if cfg.get("model_type") == "siglip":        # full SigLIP checkpoint: take its vision half
        cfg = dict(cfg.get("vision_config") or {})
    cfg.pop("model_type", None)
    cfg.pop("architectures", None)
    return SiglipVisionConfig(**cfg)


def _resolve_dtype(precision: str, device) -> Any:
    import torch

    precision = (precision or "auto").lower()
    if precision == "auto":
        # The reference runs the model in fp16 on GPU (``.half()``); fp32 on CPU.
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if precision not in table:
        raise UserError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    if table[precision] is torch.float16 and device.type == "cpu":
        raise UserError("precision=fp16 is not supported on CPU; use fp32 or bf16")
    return table[precision]


# --------------------------------------------------------------------------- scorer
class _VocabLimit:
    """Logits processor: never emit ids the tokenizer does not have (LLaVA's embedding resize)."""

    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, input_ids, scores):
        if scores.shape[-1] > self.limit:
            scores[:, self.limit:] = float("-inf")
        return scores


class PromptBuilder:
    """Token ids of MLM-Filter prompts for one tokenizer (shared by the transformers and vLLM paths)."""

    def __init__(self, tokenizer, image_token_id: int, use_im_start_end: bool = False):
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.use_im_start_end = use_im_start_end
        # v2 appends tokenizer(" ")[-1] (Qwen: 220) after the assistant header.
        self.whitespace_id = tokenizer(" ")["input_ids"][-1]

    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def prompt_ids(self, caption: str, metric: str, max_len: int = P.DEFAULT_MAX_LEN) -> list[int]:
        """Token ids of the reference prompt, with ONE image placeholder id.

        Mirrors LLaVA's ``tokenizer_image_token``: the text before and after the image
        placeholder is tokenised separately (a leading BOS kept once), truncated to
        ``max_len`` ids, then the whitespace id is appended.
        """
        before, after = P.prompt_parts(caption, metric, self.use_im_start_end)
        first, second = self._tok(before), self._tok(after)
        bos = self.tokenizer.bos_token_id
        if bos is not None and second[:1] == [bos]:
            second = second[1:]
        ids = (first + [self.image_token_id] + second)[:max_len]
        if self.image_token_id not in ids:
            raise UserError(f"max_len={max_len} cuts the image placeholder out of the prompt")
        return ids + [self.whitespace_id]


class MLMScorer:
    """A loaded MLM-Filter model with its tokenizer and image processor.

    ``score_texts(images, captions, metric)`` returns the raw generated answers;
    ``mlm_prompts.parse_score`` turns them into integers.
    """

    def __init__(self, model, tokenizer, image_processor, layout: MLMLayout, device, dtype,
                 image_token_id: int, vocab_limit: int, source: str):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.image_token_id = image_token_id
        self.vocab_limit = vocab_limit
        self.source = source
        self.image_seq_length = model.config.image_seq_length
        self.prompts = PromptBuilder(tokenizer, image_token_id, layout.use_im_start_end)
        self.whitespace_id = self.prompts.whitespace_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id

    def prompt_ids(self, caption: str, metric: str, max_len: int = P.DEFAULT_MAX_LEN) -> list[int]:
        return self.prompts.prompt_ids(caption, metric, max_len)

    def expand_image(self, ids: Sequence[int]) -> list[int]:
        """Replace the one placeholder with ``image_seq_length`` of them (transformers' Llava input)."""
        i = list(ids).index(self.image_token_id)
        return list(ids[:i]) + [self.image_token_id] * self.image_seq_length + list(ids[i + 1:])

    # ---- image side -------------------------------------------------------
    def pixel_values(self, images):
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    # ---- generation ---------------------------------------------------------
    def score_texts(self, images, captions: Sequence[str], metric: str,
                    max_new_tokens: int = P.DEFAULT_MAX_NEW_TOKENS,
                    max_len: int = P.DEFAULT_MAX_LEN) -> list[str]:
        """Greedy answers for one batch of (RGB PIL image, caption) pairs and one metric."""
        import torch

        if not captions:
            return []
        rows = [self.expand_image(self.prompt_ids(c, metric, max_len)) for c in captions]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):          # left padding: the answer starts at the same column
            input_ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        pixels = self.pixel_values(images).to(self.device, self.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                pixel_values=pixels, do_sample=False, num_beams=1,
                max_new_tokens=int(max_new_tokens), min_new_tokens=0,
                pad_token_id=self.pad_id, logits_processor=[_VocabLimit(self.vocab_limit)],
                temperature=None, top_p=None, top_k=None)
        new = out[:, width:].cpu()
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


def load_mlm(model: str = DEFAULT_MODEL, device: str = "auto", precision: str = "auto") -> MLMScorer:
    """Load an MLM-Filter checkpoint (hub id, local dir or gs://... dir) onto ``device``."""
    from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config
    from transformers.initialization import no_init_weights
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    dev = resolve_device(device)            # UserError when cuda is asked for and absent
    dtype = _resolve_dtype(precision, dev)
    ckpt = resolve_checkpoint(model)
    cfg_path = os.path.join(ckpt, "config.json")
    if not os.path.exists(cfg_path):
        raise UserError(f"{ckpt}: no config.json; not a model directory")
    layout = MLMLayout.from_config(_read_json(cfg_path), cfg_path)
    vision_dir = resolve_checkpoint(layout.vision_tower, base_dir=ckpt)

    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    tokenizer.padding_side = "left"
    # LLaVA's builder adds these before resizing the embeddings to len(tokenizer).
    extra = ([P.IM_PATCH_TOKEN] if layout.use_im_patch_token else []) + \
        ([P.IM_START_TOKEN, P.IM_END_TOKEN] if layout.use_im_start_end else [])
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    vocab_limit = len(tokenizer)

    text_cfg = Qwen2Config(**layout.text_config)
    vision_cfg = _vision_config(vision_dir)
    if vision_cfg.hidden_size != layout.mm_hidden_size:
        raise UserError(f"{cfg_path}: mm_hidden_size={layout.mm_hidden_size} but the vision tower "
                        f"{layout.vision_tower} has hidden_size={vision_cfg.hidden_size}")
    image_token_id = vocab_limit                      # first id the tokenizer never produces
    text_cfg.vocab_size = max(text_cfg.vocab_size, image_token_id + 1)
    config = LlavaConfig(
        vision_config=vision_cfg, text_config=text_cfg, image_token_index=image_token_id,
        image_seq_length=(vision_cfg.image_size // vision_cfg.patch_size) ** 2,
        projector_hidden_act="gelu", vision_feature_select_strategy="full",
        vision_feature_layer=layout.select_layer, multimodal_projector_bias=True,
        tie_word_embeddings=bool(text_cfg.tie_word_embeddings))

    state = {}
    for name, tensor in _load_weights(ckpt).items():
        new = convert_llava_key(name)
        if new is None or (new.startswith("model.vision_tower.") and not layout.unfreeze_vision_tower):
            continue
        state[new] = tensor
    if not any(k.startswith("model.vision_tower.") for k in state):
        for name, tensor in _load_weights(vision_dir).items():
            if name.startswith("vision_model."):            # full SigLIP checkpoint (google/...)
                state["model.vision_tower." + name] = tensor
            elif name.startswith(_VISION_ONLY_PREFIXES):      # a bare SiglipVisionModel save
                state["model.vision_tower.vision_model." + name] = tensor

    with no_init_weights():
        net = LlavaForConditionalGeneration(config)
    _load_state(net, state, ckpt)
    net.to(device=dev, dtype=dtype).eval()

    processor = SiglipImageProcessorPil.from_pretrained(vision_dir)
    return MLMScorer(net, tokenizer, processor, layout, dev, dtype, image_token_id, vocab_limit, model)


def _load_state(net, state: dict, where: str) -> None:
    """Copy ``state`` into ``net``; pad embedding rows the checkpoint lacks; name what is missing."""
    import torch

    own = net.state_dict()
    # The vision tower's module names depend on the transformers version (a
    # SiglipVisionModel wraps a ``vision_model``; newer AutoModel builds may not).
    wrapped = any(k.startswith("model.vision_tower.vision_model.") for k in own)
    fixed = {}
    for k, v in state.items():
        if k.startswith("model.vision_tower."):
            rest = k[len("model.vision_tower."):]
            rest = rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
            k = "model.vision_tower." + ("vision_model." if wrapped else "") + rest
        fixed[k] = v
    state = fixed
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        if key in state and state[key].shape[0] < own[key].shape[0]:
            pad = torch.zeros(own[key].shape[0] - state[key].shape[0], state[key].shape[1],
                              dtype=state[key].dtype)
            state[key] = torch.cat([state[key], pad])
    tied = net.config.tie_word_embeddings
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"{where}: checkpoint does not match the MLM-Filter architecture "
                        f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied:
        net.tie_weights()


# --------------------------------------------------------------------------- Beam handler
def decode_image(data: bytes | None):
    """RGB PIL image from encoded bytes, or None when they do not decode (webdataset's ``pilrgb``)."""
    from PIL import Image

    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception:  # PIL raises many types for bad data; all mean "corrupt"
        return None


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def score_elements(batch, metrics: Sequence[str], batch_size: int, answer) -> list[dict]:
    """Per-element result dicts for ``(image_bytes, caption)`` elements (any backend).

    ``answer(images, captions, metric) -> list[str]`` generates for decodable images
    only, ``batch_size`` at a time; undecodable ones get ``error="corrupt_image"``.
    """
    images = [decode_image(image) for image, _ in batch]
    captions = ["" if caption is None else str(caption) for _, caption in batch]
    results = [{m: None for m in metrics} for _ in batch]
    for i, image in enumerate(images):
        results[i]["error"] = CORRUPT_IMAGE if image is None else None
    good = [i for i, image in enumerate(images) if image is not None]
    for metric in metrics:
        for chunk in _batches(good, batch_size):
            answers = answer([images[i] for i in chunk], [captions[i] for i in chunk], metric)
            for i, text in zip(chunk, answers):
                results[i][metric] = P.parse_score(text)
    return results


class MLMFilterModelHandler(ModelHandler):
    """Beam ModelHandler: element ``(image_bytes, caption)`` -> PredictionResult whose
    ``inference`` is ``{metric: int|None, ..., "error": None|"corrupt_image"}``.

    The model loads once per worker process on first use (RunInference shares it across
    the process's threads). Each metric is one greedy generation pass over the batch;
    undecodable images are answered with ``error="corrupt_image"`` and None scores
    without reaching the model.
    """

    def __init__(self, model: str = DEFAULT_MODEL, metrics: Sequence[str] = P.METRICS,
                 device: str = "auto", batch_size: int = 16, precision: str = "auto",
                 max_new_tokens: int = P.DEFAULT_MAX_NEW_TOKENS, max_len: int = P.DEFAULT_MAX_LEN):
        super().__init__()
        self.model_name = model
        self.metrics = P.canonical_metrics(metrics)
        self.device = device
        self.batch_size = int(batch_size)
        self.precision = precision
        self.max_new_tokens = int(max_new_tokens)
        self.max_len = int(max_len)
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise UserError("mlm: batch_size and max_new_tokens must be >= 1")

    def load_model(self) -> MLMScorer:
        return load_mlm(self.model_name, self.device, self.precision)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def run_inference(self, batch, model: MLMScorer, inference_args=None):
        def answer(images, captions, metric):
            return model.score_texts(images, captions, metric, self.max_new_tokens, self.max_len)
        results = score_elements(batch, self.metrics, self.batch_size, answer)
        return [PredictionResult(example, out, self.model_name) for example, out in zip(batch, results)]

    def get_metrics_namespace(self) -> str:
        return "BeamFilter_MLM"


# --------------------------------------------------------------------------- export (vLLM)
def export_hf_llava(scorer: MLMScorer, directory: str) -> str:
    """Save ``scorer`` in transformers' own llava layout (what vLLM loads); return ``directory``.

    The tokenizer gains ``<image>`` as the placeholder token at ``image_token_id`` so
    vLLM's Llava processor can find and expand it.
    """
    from transformers import LlavaProcessor

    os.makedirs(directory, exist_ok=True)
    scorer.model.save_pretrained(directory)
    tok = copy.deepcopy(scorer.tokenizer)
    if P.IMAGE_TOKEN not in tok.get_vocab():
        tok.add_tokens([P.IMAGE_TOKEN], special_tokens=True)
    if tok.convert_tokens_to_ids(P.IMAGE_TOKEN) != scorer.image_token_id:
        raise UserError("cannot export: the <image> token id does not match the model's image_token_id")
    processor = LlavaProcessor(image_processor=scorer.image_processor, tokenizer=tok,
                               patch_size=scorer.model.config.vision_config.patch_size,
                               vision_feature_select_strategy="full", num_additional_image_tokens=0,
                               image_token=P.IMAGE_TOKEN)
    processor.save_pretrained(directory)
    with open(os.path.join(directory, "mlm_filter.json"), "w", encoding="utf-8") as f:
        json.dump({"source": scorer.source, "vocab_limit": scorer.vocab_limit,
                   "whitespace_id": scorer.whitespace_id,
                   "use_im_start_end": scorer.layout.use_im_start_end}, f, indent=2, sort_keys=True)
    return directory
