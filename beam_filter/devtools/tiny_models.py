"""Tiny randomly initialised twins of the real models, for ``make-test-models`` and ``--test-models``.

Each twin has the real architecture at toy sizes and is written in the on-disk
layout the production loader reads, so a whole preset runs end to end with no
model hub: :func:`write_tiny_clip` (an open_clip config json + checkpoint, loaded
by :func:`beam_filter.models.clip.load_clip`) and :func:`write_tiny_mlm` (a
LLaVA-Unified MLM-Filter checkpoint, loaded by
:func:`beam_filter.models.mlm_filter.load_mlm`). Deterministic in ``seed``.
torch, open_clip and transformers are imported when a writer runs.
"""

from __future__ import annotations

import copy
import json
import os
import warnings

from beam_filter.errors import UserError
from beam_filter.models import mlm_prompts as P


# --------------------------------------------------------------------------- CLIP
def write_tiny_clip(directory: str, like: str = "ViT-B-32", seed: int = 0) -> tuple[str, str]:
    """Write a tiny randomly initialised CLIP of ``like``'s family; returns (config json, checkpoint).

    Same model class, activation and tokenizer (vocab, context length) as ``like``,
    with a 2-layer, 64-wide ViT on about 64 px images, a 2-layer 64-wide text
    transformer and 32-d embeddings: a real open_clip checkpoint (``{"state_dict": ...}``)
    that ``load_clip(config_json, checkpoint)`` loads, in well under a second.
    """
    import open_clip
    import torch

    from beam_filter.models.clip import _model_name   # registers the config with open_clip

    base = open_clip.get_model_config(like)
    if base is None:
        raise UserError(f"unknown CLIP model {like!r}")
    cfg = copy.deepcopy(base)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if ("timm_model_name" in vision or "hf_model_name" in text
            or not isinstance(vision.get("layers"), int) or "patch_size" not in vision):
        raise UserError(f"write_tiny_clip supports ViT towers with open_clip's own text transformer; "
                        f"{like!r} is not one")
    patch = int(vision["patch_size"])
    grid = max(2, round(64 / patch))
    vision.update(image_size=patch * grid, layers=2, width=64, head_width=32)
    text.update(layers=2, width=64, heads=2)
    cfg["embed_dim"] = 32
    os.makedirs(directory, exist_ok=True)
    stem = f"tiny-{like.replace('/', '-')}"
    cfg_path = os.path.join(directory, f"{stem}.json")
    ckpt_path = os.path.join(directory, f"{stem}.pt")
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    name = _model_name(cfg_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = open_clip.create_model(name, pretrained=None, device="cpu")
    torch.save({"state_dict": net.state_dict()}, ckpt_path)
    return cfg_path, ckpt_path


# --------------------------------------------------------------------------- MLM-Filter
_TINY_CORPUS_EXTRA = (
    "a photo of a red car parked on the street near a tall building at night "
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 10 42 85 100 "
)


def _tiny_tokenizer(directory: str):
    """A byte-level BPE tokenizer built offline, Qwen-shaped: digits split one by one, ChatML specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    # Qwen2's pre-tokenisation pattern: each digit is its own piece.
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = [P.INSTRUCTION_TEMPLATE, *P.CRITERIA.values(), P.SYSTEM, _TINY_CORPUS_EXTRA]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, chat_template=P.CHAT_TEMPLATE)
    fast.save_pretrained(directory)
    return fast


def _steer_to_score_tokens(llm, tokenizer) -> None:
    """Make a random LLM answer with digits (and sometimes "\n" or ","), input-dependently.

    The final norm keeps only hidden dims 0 and 1, the input embeddings carry nothing in
    those dims (so what lands there comes from attention over the image and caption),
    and the output rows of the digits, newline and comma sit on a large circle in that
    plane: the next token is the one whose angle is closest to the hidden state's. So
    answers vary with the input, parse to integers most of the time and to None
    sometimes, and the offline smoke runs exercise keep, drop and ``mlm_unparsable``.
    """
    import math

    import torch

    tokens = [str(d) for d in range(10)] + ["\u010a", ","]      # byte-level "\n" is "Ċ"
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        norm = llm.model.norm.weight
        norm.zero_()
        norm[:2] = 1.0
        llm.model.embed_tokens.weight[:, :2] = 0.0
        head = llm.lm_head.weight
        for k, tid in enumerate(ids):
            angle = 2 * math.pi * k / len(ids)
            head[tid, 0] = 20 * math.cos(angle)
            head[tid, 1] = 20 * math.sin(angle)


def write_tiny_mlm(directory: str, seed: int = 0) -> str:
    """Write a tiny random MLM-Filter twin in the published on-disk layout; return ``directory``.

    Real architecture at toy sizes: a SigLIP vision tower (in ``vision_tower/``, referenced
    by ``mm_vision_tower`` as the real checkpoint references google/siglip-so400m-patch14-384),
    an mlp2x_gelu projector and a Qwen2 LLM (untied head, steered to answer in digits), LLaVA-Unified weight names,
    a tokenizer with ChatML specials and a SigLIP image-processor config. Deterministic in ``seed``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    os.makedirs(directory, exist_ok=True)
    tokenizer = _tiny_tokenizer(directory)
    torch.manual_seed(seed)

    vision_cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, image_size=56, patch_size=14)
    vision = SiglipVisionModel(vision_cfg).eval()
    vision_dir = os.path.join(directory, "vision_tower")
    os.makedirs(vision_dir, exist_ok=True)
    # Same layout as google/siglip-so400m-patch14-384: a "siglip" config holding a
    # vision_config, weights named vision_model.* (the text half is omitted here).
    tower = {"vision_model." + k.removeprefix("vision_model."): v.contiguous()
             for k, v in vision.state_dict().items()}
    save_file(tower, os.path.join(vision_dir, "model.safetensors"), metadata={"format": "pt"})
    vision_json = {k: v for k, v in vision_cfg.to_dict().items()
                   if k not in ("architectures", "model_type", "transformers_version")}
    with open(os.path.join(vision_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"architectures": ["SiglipModel"], "model_type": "siglip",
                   "vision_config": vision_json}, f, indent=2, sort_keys=True)
    SiglipImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3, resample=3).save_pretrained(vision_dir)

    vocab = (len(tokenizer) + 63) // 64 * 64 + 64     # spare rows, as Qwen's 151936 > len(tokenizer)
    text_cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=4096, tie_word_embeddings=False,
                           rope_theta=1000000.0, rms_norm_eps=1e-6,
                           bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    llm = Qwen2ForCausalLM(text_cfg).eval()
    _steer_to_score_tokens(llm, tokenizer)
    weights = {k: v.contiguous() for k, v in llm.state_dict().items()}
    proj1 = torch.nn.Linear(vision_cfg.hidden_size, text_cfg.hidden_size)
    proj2 = torch.nn.Linear(text_cfg.hidden_size, text_cfg.hidden_size)
    for i, layer in ((0, proj1), (2, proj2)):
        weights[f"model.mm_projector.{i}.weight"] = layer.weight.detach().contiguous()
        weights[f"model.mm_projector.{i}.bias"] = layer.bias.detach().contiguous()
    save_file(weights, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})

    config = {k: v for k, v in text_cfg.to_dict().items()
              if k not in ("architectures", "model_type", "transformers_version")}
    config.update({
        "architectures": ["LlavaQwenForCausalLM"], "model_type": "llava_qwen",
        "mm_vision_tower": "vision_tower", "mm_hidden_size": vision_cfg.hidden_size,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "mm_patch_merge_type": "flat",
        "image_aspect_ratio": "pad", "tokenizer_padding_side": "right",
        "unfreeze_mm_vision_tower": False,
    })
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return directory


# --------------------------------------------------------------------------- captioners (BLIP, BLIP-2)
_CAPTION_WORDS = (
    "a an the of picture photo image stock on in with and at near two dog cat man woman child car "
    "red blue green white black street beach table room tree sky water house food plate sitting "
    "standing running parked building night day small large old young people group"
).split()


def _tiny_bert_tokenizer(directory: str):
    """A tiny uncased WordPiece vocabulary (BLIP's tokenizer family) with BLIP's ``[DEC]`` bos token."""
    from transformers import BertTokenizerFast

    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_CAPTION_WORDS,
             *[f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"], *"abcdefghijklmnopqrstuvwxyz0123456789.,-'"]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    tok = BertTokenizerFast(path, do_lower_case=True, bos_token="[DEC]")   # transformers 5: `vocab` is positional
    tok.save_pretrained(directory)
    return tok


def _save_clip_image_processor(directory: str, size: int) -> None:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from transformers import BlipImageProcessor

    BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(OPENAI_DATASET_MEAN),
                       image_std=list(OPENAI_DATASET_STD), resample=3).save_pretrained(directory)


def write_tiny_blip(directory: str, seed: int = 0) -> str:
    """Write a tiny random ``BlipForConditionalGeneration`` (ViT 2x32 on 32 px, BERT decoder 2x32) with a
    tiny WordPiece vocabulary and BLIP's image processor config; returns ``directory``."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    tok = _tiny_bert_tokenizer(directory)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=16, projection_dim=32)
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    return _save_seeded_hf(directory, lambda: BlipForConditionalGeneration(cfg), seed)


def _save_seeded_hf(directory: str, make, seed: int, image_size: int = 32) -> str:
    """Build a transformers model with ``make()`` under ``seed`` (the global RNG left as it was), save it
    with a CLIP-style image processor config of ``image_size``; returns ``directory``."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make().eval()
    net.save_pretrained(directory)
    _save_clip_image_processor(directory, image_size)
    return directory


def write_tiny_blip2(directory: str, seed: int = 0) -> str:
    """Write a tiny random ``Blip2ForConditionalGeneration`` (ViT, 1-layer Q-Former with 4 queries, OPT
    2x32) with a tiny WordPiece vocabulary plus an ``<image>`` token; returns ``directory``."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    tok = _tiny_bert_tokenizer(directory)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.save_pretrained(directory)
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=16)
    qformer = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                   num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64)
    text = dict(model_type="opt", vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    cfg = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                      image_token_index=image_id)
    return _save_seeded_hf(directory, lambda: Blip2ForConditionalGeneration(cfg), seed)


def write_tiny_blip_itm(directory: str, seed: int = 0) -> str:
    """Write a tiny random ``BlipForImageTextRetrieval`` (ViT 2x32 on 32 px, BERT text encoder 2x32 with
    cross-attention, ITM head) with the tiny WordPiece vocabulary and BLIP's image processor config;
    returns ``directory`` (what models/blip_itm.py loads)."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    tok = _tiny_bert_tokenizer(directory)
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=16, projection_dim=32)
    cfg = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    return _save_seeded_hf(directory, lambda: BlipForImageTextRetrieval(cfg), seed)


def write_tiny_fast(directory: str, seed: int = 0, side: int = 512) -> str:
    """Write a tiny random FAST twin (TorchScript) with the contract of ``models/text_detect.FastDetector``:
    ``(N, 3, side, side)`` ImageNet-normalised RGB in, ``(N, 1, side/4, side/4)`` kernel logits out
    (FAST predicts at 1/4 resolution). Three convolutions, not FAST's TextNet: it exercises the
    handler's pre- and post-processing, not the detector's accuracy. Returns the file path."""
    import torch

    class TinyFast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.Conv2d(8, 1, 1))

        def forward(self, x):
            return self.body(x)

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tiny-fast.pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyFast().eval()
        probe = torch.randn(1, 3, side, side)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)     # TorchScript is deprecated, still the format
        # Centre the logits so about half the map is "text": the post-processing then has
        # components to label, measure and outline.
        net.body[-1].bias -= net(probe).median()
        traced = torch.jit.trace(net, torch.zeros(1, 3, side, side))
        torch.jit.save(traced, path)
    return path


# --------------------------------------------------------------------------- HYPE (hyperbolic CLIP)
def write_tiny_hype(directory: str, seed: int = 0, n_reference: int = 16) -> tuple[str, str, str]:
    """Write a tiny HYPE twin: (model config json, checkpoint, reference set); see ``models/hype.py``.

    The towers are :func:`write_tiny_clip`'s tiny ``ViT-L-14`` family; the checkpoint is a plain
    state dict, as the authors release it, with the learned log-scalars ``curvature`` (c = 0.7)
    and ``alpha_img``/``alpha_txt`` (chosen so tangent norms land near 1-3, where cones are
    neither degenerate nor clamped); ``reference.pt`` holds ``{"img", "txt"}`` tangent features.
    """
    import math

    import torch

    cfg_path, clip_ckpt = write_tiny_clip(directory, like="ViT-L-14", seed=seed)
    state = torch.load(clip_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    os.remove(clip_ckpt)
    state["curvature"] = torch.tensor(math.log(0.7))
    state["alpha_img"] = torch.tensor(math.log(0.35))
    state["alpha_txt"] = torch.tensor(math.log(0.35))
    ckpt = os.path.join(directory, "tiny-hype.pt")
    torch.save(state, ckpt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        dim = state["text_projection"].shape[1]
        ref = {k: torch.randn(n_reference, dim) * (0.8 / math.sqrt(dim)) * torch.linspace(1, 3, n_reference)[:, None]
               for k in ("img", "txt")}
    reference = os.path.join(directory, "reference.pt")
    torch.save(ref, reference)
    return cfg_path, ckpt, reference
