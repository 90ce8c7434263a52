"""open_clip as a Beam RunInference ModelHandler: CLIP score, flipped CLIP score, embeddings.

Example element: ``(image_bytes, caption)``. Per example the handler returns::

    {"image_embedding": float32[d] (L2-normalised), "text_embedding": float32[d] (normalised),
     "score": cosine(image, text)            # DataComp's clip_*_similarity_score,
     "flipped_score": cosine(mirror(image), text)  # "The Devil is in the Details",
     "error": None | "corrupt_image"}

With ``mask_fill`` set (T-MARS), examples are ``(image_bytes, caption, text_boxes)``
(``rules/ocr.encode_boxes`` polygons) and the output adds ``"masked_score"``: cosine of the
image with those regions filled (``rules/ocr.fill_regions``) and the text. The masked view
comes from the same decode and runs in the same forward pass as the other views; an image
without boxes is its own masked view, so its masked score is its score.

For an image that does not decode, ``error`` is ``"corrupt_image"``, both scores are
NaN and ``image_embedding`` is all zeros (the text embedding is still real); the
batch goes on. The mirrored image is made from the same decoded pixels and runs
in the same forward pass as the original (2B images per batch of B).

Loading is lazy: constructing the handler imports neither torch nor open_clip,
because Beam pickles the handler into the pipeline graph. ``load_model`` runs once
per worker process (Beam shares the result among that process's threads) or, with
``share_across_processes=True``, once per machine (``model_copies`` copies, default
one) in Beam's multi-process shared server, which every SDK process on the VM
then calls through a proxy; that is what you want for ViT-L/H on one GPU with
several SDK processes. Everything the proxy needs is the one method
:meth:`ClipRunner.infer`, so both modes run the same code.

Thread safety: threads of a worker share one :class:`ClipRunner`. Image decoding
runs outside any lock (in a shared thread pool), tokenisation (open_clip's
tokenizer behind a word cache, :mod:`beam_filter.models.clip_tokenizer`) and
queueing the forward pass each hold a lock. On CUDA each thread works on its own stream, so one
thread's nvJPEG decode, resize and copies run beside another's forward pass instead
of waiting behind it on one queue; the model lock is released once the pass is
queued (results come back in one copy outside it), so at most two batches of
activations are on the device. With 2-3 threads this took ViT-L-14 from 71% to 80%
GPU busy and ViT-B-32 (decode=gpu) from 1,744 to 2,015-2,172 img/s on an H100
(figures in benchmarks/bench_clip.py).

QuickGELU: OpenAI (and DFN) checkpoints were trained with QuickGELU but open_clip's
``ViT-B-32``/``ViT-L-14`` configs use GELU; open_clip 3 only warns. :func:`load_clip`
switches QuickGELU on whenever the pretrained tag says so, so ``ViT-L-14``/``openai``
gives the scores DataComp's ``clip_l14_similarity_score`` was computed with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.fsio import is_remote
from beam_filter.models.base import PRECISIONS, local_copy, resolve_device, resolve_precision, torch_dtype
from beam_filter.models.clip_tokenizer import fast_tokenizer
from beam_filter.models.image_prep import (CpuImagePrep, GpuJpegPrep, PrepConfig, PreparedBatch,
                                           normalize_on_device)

DECODERS = ("cpu", "gpu")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_register_lock = threading.Lock()


# ---------------------------------------------------------------- loading

def _model_name(model: str) -> str:
    """open_clip model name for ``model``; a config JSON path is registered under its file stem."""
    if model.startswith("hf-hub:"):
        return model
    if not model.endswith(".json"):
        return model.replace("/", "-")   # open_clip spells ViT-B/32 as ViT-B-32
    path = local_copy(model)
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise UserError(f"{model} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    import open_clip

    name = os.path.splitext(os.path.basename(path))[0]
    with _register_lock:
        if open_clip.get_model_config(name) != cfg:
            open_clip.add_model_config(path)
    return name


def is_checkpoint_path(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a checkpoint file (local or remote) rather than a tag."""
    return bool(pretrained) and (is_remote(pretrained) or os.path.sep in pretrained
                                 or pretrained.endswith(_CHECKPOINT_SUFFIXES))


def _fetch_failed(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a download that failed: no network, offline mode,
    nothing in the local cache. open_clip wraps those in a RuntimeError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (type(e).__module__.split(".")[0] in ("huggingface_hub", "requests", "urllib3")
                or isinstance(e, (FileNotFoundError, ConnectionError, TimeoutError))
                or "Failed to download" in str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


class _DropDownloadErrorLog(logging.Filter):
    """open_clip logs a failed download at ERROR on the root logger before raising; the
    raise becomes our one-line UserError, so the log record would only repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("Failed to download")


def _checkpoint(model_name: str, pretrained: str | None) -> tuple[str | None, bool]:
    """(pretrained argument for open_clip, whether it is a known tag)."""
    if not pretrained or model_name.startswith("hf-hub:"):
        return None, False
    import open_clip

    if is_checkpoint_path(pretrained):
        return local_copy(pretrained), False
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags:
        raise UserError(f"unknown pretrained tag {pretrained!r} for CLIP model {model_name!r}; "
                        f"known: {', '.join(tags) or '(none)'}, or give a checkpoint path")
    return pretrained, True


def load_clip(model: str, pretrained: str | None, device: str = "auto", precision: str = "auto"):
    """Load an open_clip model in eval mode: returns ``(model, preprocess_cfg, tokenizer)``.

    ``model``: an open_clip architecture (``ViT-L-14``), ``hf-hub:org/repo``, or a path
    (local or gs://) to an open_clip model-config JSON. ``pretrained``: a tag
    (``openai``, ``dfn5b``), a checkpoint path (local or gs://), or None for random
    weights. ``preprocess_cfg`` is the dict open_clip attached to the model (size,
    mean, std, interpolation, resize_mode) -- what its own eval transform uses.
    ``tokenizer`` is open_clip's, behind the word cache of :mod:`clip_tokenizer`
    where that gives the same ids.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    import open_clip

    name = _model_name(model)
    base_cfg = open_clip.get_model_config(name) if not name.startswith("hf-hub:") else None
    if base_cfg is None and not name.startswith("hf-hub:"):
        raise UserError(f"unknown CLIP model {model!r}; known: {', '.join(open_clip.list_models())}")
    ckpt, is_tag = _checkpoint(name, pretrained)
    quick_gelu = False
    if is_tag:
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, ckpt).get("quick_gelu")) and \
            not base_cfg.get("quick_gelu", False)
    quiet = _DropDownloadErrorLog()
    logging.getLogger().addFilter(quiet)
    try:
        net = open_clip.create_model(name, pretrained=ckpt, precision=prec, device=dev,
                                     force_quick_gelu=quick_gelu)
    except Exception as e:
        if isinstance(e, RuntimeError) and (
                "size mismatch" in str(e) or "Missing key" in str(e) or "Unexpected key" in str(e)):
            raise UserError(f"checkpoint {pretrained!r} does not fit CLIP model {model!r}: "
                            f"{str(e).splitlines()[0]}") from e
        if (is_tag or name.startswith("hf-hub:")) and _fetch_failed(e):
            raise UserError(f"cannot load CLIP weights {model!r}/{pretrained!r}: not in the local cache and "
                            "the model hub cannot be reached (offline or no network); run once with network "
                            "to cache them, or set the clip stage's pretrained parameter to a local "
                            "checkpoint (--set clip.pretrained=/path/to/ckpt.pt)") from None
        raise
    finally:
        logging.getLogger().removeFilter(quiet)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    cfg = dict(open_clip.get_model_preprocess_cfg(net))
    tokenizer = fast_tokenizer(open_clip.get_tokenizer(name))
    return net, cfg, tokenizer


# clip_provenance lives in models/provenance.py (no torch/Beam import, so that finalize can
# describe a stage cheaply); imported here for the handler below and for existing callers.
from beam_filter.models.provenance import clip_provenance  # noqa: E402,F401


# ---------------------------------------------------------------- running

class ClipRunner:
    """The loaded model plus its preprocessing: what ``load_model`` returns.

    Its one public method, :meth:`infer`, is all Beam's multi-process proxy calls.
    """

    def __init__(self, model: str, pretrained: str | None, device: str, precision: str,
                 draft: bool, decode_threads: int | None, decode: str, flip: bool = True,
                 mask_fill: str | None = None):
        import torch

        self.net, pcfg, self.tokenizer = load_clip(model, pretrained, device, precision)
        self.device = next(self.net.parameters()).device
        # open_clip's fp16/bf16 keep some parameters (embeddings, LayerNorm) in fp32, so
        # take the input dtype from the precision, not from the first parameter.
        self.dtype = torch_dtype(precision, self.device)
        self.prep_cfg = PrepConfig.from_open_clip(pcfg)
        self.cpu_prep = CpuImagePrep(self.prep_cfg, draft=draft, threads=decode_threads,
                                     pin_memory=self.device.type == "cuda")
        if decode == "gpu":
            if self.device.type != "cuda":
                raise UserError("decode=gpu needs a CUDA device (the model is on "
                                f"{self.device}); use decode=cpu")
            self.prep = GpuJpegPrep(self.prep_cfg, self.device, self.cpu_prep)
        else:
            self.prep = self.cpu_prep
        self.flip = flip
        # T-MARS: examples carry text boxes; their masked view joins the same forward pass.
        self.mask_fill = mask_fill
        if mask_fill is not None and decode == "gpu":
            raise UserError("the masked CLIP view is prepared on the CPU (one decode for all views); "
                            "use decode=cpu with masked=true")
        self._model_lock = threading.Lock()
        self._tok_lock = threading.Lock()
        self._local = threading.local()
        self._torch = torch

    def _stream(self):
        """This thread's own CUDA stream (None off CUDA).

        On one shared stream a thread's nvJPEG decode and its synchronisations waited
        for another thread's forward pass; on a stream per thread the decode, resize
        and host-to-device copies of one batch run beside the forward pass of another.
        """
        if self.device.type != "cuda":
            return None
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = self._torch.cuda.Stream(self.device)
        return stream

    # ---- one decode shared with the next model stages (models/shared_decode.py) ----
    def decode_spec(self):
        return self.cpu_prep.decode_spec()

    def views(self, img):
        return self.cpu_prep.views(img)

    def infer_views(self, examples: Sequence[tuple[bytes, str]], views: Sequence, errors: Sequence) -> list[dict]:
        """:meth:`infer` of images another caller decoded (``views``: :meth:`views` of each)."""
        return self.infer(examples, self.cpu_prep.batch_from_views(views, errors))

    def infer(self, examples: Sequence[tuple[bytes, str]], prepared: PreparedBatch | None = None) -> list[dict]:
        torch = self._torch
        captions = [e[1] if isinstance(e[1], str) else ("" if e[1] is None else str(e[1]))
                    for e in examples]
        n = len(examples)
        stream = self._stream()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if prepared is not None:
                batch = prepared
            elif self.mask_fill is not None:
                from beam_filter.rules.ocr import decode_boxes

                images = [bytes(e[0]) if e[0] is not None else b"" for e in examples]
                regions = [decode_boxes(e[2]) if len(e) > 2 else [] for e in examples]
                batch = self.cpu_prep.prepare_masked(images, regions, self.mask_fill)
            else:
                images = [bytes(e[0]) if e[0] is not None else b"" for e in examples]
                batch = self.prep.prepare(images)       # no lock: the thread pool is shared
            masked_idx = sorted(batch.masked) if batch.masked else []
            with self._tok_lock:
                tokens = self.tokenizer(captions)
            # The lock covers enqueueing the forward pass, not waiting for it: the next
            # thread queues its batch while this one's results come back.
            with self._model_lock, torch.inference_mode():
                x, xf = normalize_on_device(batch, self.prep_cfg, self.device, self.dtype, self.flip)
                views = [x, xf] if self.flip else [x]
                if masked_idx:
                    only = PreparedBatch(np.stack([batch.masked[i] for i in masked_idx]), {}, [])
                    views.append(normalize_on_device(only, self.prep_cfg, self.device, self.dtype, False)[0])
                feats = self.net.encode_image(torch.cat(views) if len(views) > 1 else x)
                txt = self.net.encode_text(tokens.to(self.device, non_blocking=True))
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
                txt = torch.nn.functional.normalize(txt.float(), dim=-1)
                img = feats[:n]
                score = (img * txt).sum(-1, keepdim=True)
                flipped = ((feats[n:2 * n] * txt).sum(-1, keepdim=True) if self.flip
                           else torch.full_like(score, float("nan")))
                # Masked score: the image itself where there was nothing to mask.
                masked = score.clone()
                if masked_idx:
                    rows = torch.tensor(masked_idx, device=score.device)
                    masked[rows] = (feats[-len(masked_idx):] * txt[rows]).sum(-1, keepdim=True)
                packed = torch.cat([img, txt, score, flipped, masked], 1)
                del x, xf, feats
            host = packed.cpu().numpy()                 # one device-to-host copy, one sync
        d = img.shape[1]
        img, txt = host[:, :d], host[:, d:2 * d]
        score, flipped, masked = host[:, 2 * d], host[:, 2 * d + 1], host[:, 2 * d + 2]
        out = []
        for i, err in enumerate(batch.errors):
            if err is None:
                out.append({"image_embedding": img[i], "text_embedding": txt[i],
                            "score": float(score[i]), "flipped_score": float(flipped[i]),
                            "error": None})
                if self.mask_fill is not None:
                    out[-1]["masked_score"] = float(masked[i])
            else:
                out.append({"image_embedding": np.zeros_like(img[i]), "text_embedding": txt[i],
                            "score": float("nan"), "flipped_score": float("nan"), "error": err})
                if self.mask_fill is not None:
                    out[-1]["masked_score"] = float("nan")
        return out


class ClipModelHandler(ModelHandler):
    """Beam ModelHandler for open_clip models: ``(image_bytes, caption)`` -> scores and embeddings.

    Batches are exactly ``batch_size`` (the last may be smaller) so the GPU sees one
    shape. ``precision='auto'`` is fp16 on CUDA, fp32 on CPU. ``decode='gpu'`` decodes
    JPEGs with nvJPEG (CPU fallback per image); ``draft`` lets libjpeg decode large
    JPEGs at reduced size on the CPU path (see :mod:`beam_filter.models.image_prep`
    for the measured score difference). ``share_across_processes`` loads one model
    per machine (``model_copies`` of them) for all SDK processes instead of one per
    process. ``flip=False`` skips the mirrored pass (half the image-tower work) and
    returns ``flipped_score`` NaN, for recipes that never read it.
    """

    def __init__(self, model: str, pretrained: str | None = None, device: str = "auto",
                 batch_size: int = 64, precision: str = "auto", draft: bool = False,
                 decode_threads: int | None = None, decode: str = "cpu",
                 share_across_processes: bool = False, model_copies: int = 1, flip: bool = True,
                 mask_fill: str | None = None):
        if not model:
            raise UserError("CLIP model name is empty")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}")
        if (precision or "auto").lower() not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        if decode not in DECODERS:
            raise UserError(f"unknown decode {decode!r}: use cpu or gpu")
        if decode_threads is not None and decode_threads < 1:
            raise UserError(f"decode_threads must be >= 1, not {decode_threads!r}")
        if model_copies < 1:
            raise UserError(f"model_copies must be >= 1, not {model_copies!r}")
        if mask_fill is not None:
            from beam_filter.rules.ocr import FILLS

            if mask_fill not in FILLS:
                raise UserError(f"unknown mask_fill {mask_fill!r}: use one of {', '.join(FILLS)}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size,
                         large_model=share_across_processes,
                         model_copies=model_copies if share_across_processes else None)
        self.model = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.draft = draft
        self.decode_threads = decode_threads
        self.decode = decode
        self.flip = flip
        self.mask_fill = mask_fill

    def load_model(self) -> ClipRunner:
        return ClipRunner(self.model, self.pretrained, self.device, self.precision, self.draft,
                          self.decode_threads, self.decode, self.flip, self.mask_fill)

    def run_inference(self, batch: Sequence[tuple[bytes, str]], model: ClipRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return model.infer(list(batch))

    def get_num_bytes(self, batch: Sequence[tuple[bytes, str]]) -> int:
        # The default pickles the whole batch just to measure it: megabytes of JPEG per call.
        return sum(len(e[0] or b"") + len((e[1] or "").encode()) for e in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterClip"

    def share_model_across_processes(self) -> bool:
        return self._share_across_processes

    def model_copies(self) -> int:
        return self._model_copies or 1

    def provenance(self) -> dict:
        return clip_provenance(self.model, self.pretrained)
