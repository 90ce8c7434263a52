"""Scene-text detection (+ recognition) as a Beam ModelHandler: PP-OCR by default, FAST optional.

Example element: the encoded image bytes. Per example the handler returns::

    {"boxes": [int (k, 2) polygons in the decoded image's pixel frame], "det_scores": [float],
     "texts": [str], "rec_scores": [float],     # the recogniser's reading of each box
     "width": int, "height": int, "error": None | "corrupt_image" | "image_too_large"}

Every detected box is returned with what the recogniser read in it; which boxes count
(``rules.ocr.confirmed``) is the stage's rule, so the confirmation threshold is a stage
parameter.

Detectors (both get the image padded to a centred square and resized, the way T-MARS'
code feeds FAST, so a batch is one tensor and one session call whatever the aspect
ratios; polygons are mapped back to the original frame):

* ``ppocr`` (default): the PP-OCRv4 detection model (DB head) shipped as ONNX inside
  ``rapidocr-onnxruntime``, so real weights install from PyPI and run offline and in CI.
  Square side ``det_size`` (default 512, a multiple of 32: DataComp images are at most
  512 px, and 640 found the same text on the generated set at 1.8x the detector time, with
  one more false positive), white padding, mean/std 0.5, BGR as PaddleOCR expects; rapidocr's own DB post-processing (``DBPostProcess``) with
  ``det_min_score`` as its box threshold (rapidocr's default 0.5).
* ``fast``: FAST (Chen et al. 2021), the detector of T-MARS' code
  (``fast_tiny_tt_512_finetune_ic17mlt``): square 512, padding 255, ImageNet mean/std,
  RGB; the authors' post-processing (:class:`FastDetector`): kernel instances grown by
  FAST's max-pool dilation, kept when their mean score >= ``det_min_score`` (authors: 0.85)
  and their area in the 512 frame >= ``min_area`` (authors: 200); polygons from contours. beam_filter does not
  ship FAST's TextNet architecture: ``fast_checkpoint`` is a TorchScript export of the
  authors' model (load their EMA checkpoint with their code, ``torch.jit.trace`` it on a
  ``(1, 3, 512, 512)`` input, save), whose first output channel is the kernel logit map.
  ``devtools.tiny_models.write_tiny_fast`` writes a random twin with that contract.

Determinism: on the CPU provider a batch gives bit-identical detector maps to the same images
run one by one (measured), so results do not depend on how Beam batches the elements.

Recognition: PP-OCRv4's recogniser from the same package (rapidocr's ``TextRecognizer``),
all boxes of a batch in ``rec_batch_size`` crops per call, each box cut out of the
original image with a perspective warp.

ONNX Runtime runs on the CPU provider, and on CUDA when ``device`` allows it and the
installed onnxruntime has the CUDA provider (``onnxruntime-gpu``; beam_filter does not
require it). ``device=cuda`` without that provider is a load-time error. OpenCV comes from
``opencv-python`` only (setup.py): never install ``opencv-python-headless`` beside it.

Loading is lazy (nothing heavy at construction: Beam pickles the handler into the graph).
"""

from __future__ import annotations

import warnings
from importlib import resources
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.models.image_prep import decode, decode_error

DETECTORS = ("ppocr", "fast")
PPOCR_DET = "ch_PP-OCRv4_det_infer.onnx"
PPOCR_REC = "ch_PP-OCRv4_rec_infer.onnx"
# Published defaults per detector: (square side, box score threshold, min area).
DEFAULTS = {"ppocr": (512, 0.5, 0.0), "fast": (512, 0.85, 200.0)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rapidocr_model(name: str) -> str:
    """Path of an ONNX model shipped in the rapidocr-onnxruntime wheel."""
    try:
        path = resources.files("rapidocr_onnxruntime") / "models" / name
    except ModuleNotFoundError:
        raise UserError("text_detect needs rapidocr-onnxruntime (pip install rapidocr-onnxruntime)") from None
    if not path.is_file():
        raise UserError(f"rapidocr-onnxruntime has no {name} (reinstall it)")
    return str(path)


def ort_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` (auto, cpu, cuda): CUDA first when asked and present."""
    import onnxruntime as ort

    device = (device or "auto").lower()
    have = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in have
    if device.startswith("cuda") and not cuda:
        raise UserError(f"device={device!r}: this onnxruntime has no CUDA provider (providers: "
                        f"{', '.join(have)}); install onnxruntime-gpu or use device=cpu/auto")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
    if cuda and device != "cpu":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# ---------------------------------------------------------------- geometry

def square_pad(rgb: np.ndarray, side: int, fill: int = 255):
    """(H, W, 3) -> ((side, side, 3) uint8, scale, pad_x, pad_y): centred square pad, then resize.

    ``original = square_coordinate * scale - pad``, the inverse used for the polygons.
    """
    import cv2

    h, w = rgb.shape[:2]
    big = max(h, w)
    pad_y, pad_x = (big - h) // 2, (big - w) // 2
    canvas = np.full((big, big, 3), fill, dtype=np.uint8)
    canvas[pad_y:pad_y + h, pad_x:pad_x + w] = rgb
    interp = cv2.INTER_AREA if big > side else cv2.INTER_LINEAR
    return cv2.resize(canvas, (side, side), interpolation=interp), big / side, pad_x, pad_y


def to_original(poly: np.ndarray, scale: float, pad_x: int, pad_y: int, w: int, h: int) -> np.ndarray:
    """A polygon of the square frame -> integer vertices in the original frame, clipped to it."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2) * scale - (pad_x, pad_y)
    p[:, 0] = np.clip(p[:, 0], 0, w - 1)
    p[:, 1] = np.clip(p[:, 1], 0, h - 1)
    return np.rint(p).astype(np.int64)


def crop_quad(bgr: np.ndarray, poly: np.ndarray) -> np.ndarray | None:
    """Perspective crop of the min-area rectangle around ``poly`` (upright when taller than 1.5x wide)."""
    import cv2

    rect = cv2.minAreaRect(np.asarray(poly, dtype=np.float32).reshape(-1, 2))
    pts = cv2.boxPoints(rect)
    # Order: top-left, top-right, bottom-right, bottom-left.
    s, d = pts.sum(1), np.diff(pts, axis=1).ravel()
    quad = np.array([pts[np.argmin(s)], pts[np.argmin(d)], pts[np.argmax(s)], pts[np.argmax(d)]], np.float32)
    width = int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3])))
    height = int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2])))
    if width < 2 or height < 2:
        return None
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    m = cv2.getPerspectiveTransform(quad, dst)
    out = cv2.warpPerspective(bgr, m, (width, height), borderMode=cv2.BORDER_REPLICATE,
                              flags=cv2.INTER_CUBIC)
    if height >= 1.5 * width:
        out = np.rot90(out)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------- detectors

class PpOcrDetector:
    """PP-OCRv4 DB detector on ONNX Runtime, a whole batch per session call."""

    def __init__(self, providers: list[str], side: int, min_score: float, threads: int | None):
        import onnxruntime as ort
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(rapidocr_model(PPOCR_DET), sess_options=opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.side = side
        # rapidocr's configuration (config.yaml) except the box threshold, a parameter here.
        self.post = DBPostProcess(thresh=0.3, box_thresh=min_score, max_candidates=1000,
                                  unclip_ratio=1.6, score_mode="fast", use_dilation=True)

    def detect(self, squares: np.ndarray) -> list[tuple[list[np.ndarray], list[float]]]:
        """(N, S, S, 3) RGB uint8 squares -> per image (polygons, scores) in the square frame."""
        x = squares[..., ::-1].astype(np.float32) / 255.0       # BGR, as PaddleOCR was trained
        x = ((x - 0.5) / 0.5).transpose(0, 3, 1, 2)
        pred = self.session.run(None, {self.input: np.ascontiguousarray(x)})[0]
        out = []
        for i in range(len(squares)):
            boxes, scores = self.post(pred[i:i + 1], (self.side, self.side))
            out.append(([np.asarray(b) for b in boxes], [float(s) for s in scores]))
        return out


class FastDetector:
    """FAST (T-MARS' detector) from a TorchScript export, with the authors' post-processing.

    As FAST's ``get_results`` does it (czczup/FAST, models/head/fast_head.py, generate_bbox.py):
    kernels are ``logit > 0`` at the network's output resolution, labelled as connected
    components; the text score map is the logit map taken to half the input size (nearest),
    grown by a max-pool of ``pooling_size // 2 + 1`` (``pooling_size`` 7 in the tt_512 config),
    sigmoid, then to the input size (nearest); the kernel labels are grown the same way. An
    instance is kept when it covers >= ``min_area`` pixels of the input frame and its mean
    score is >= ``min_score``; its polygon is the first external contour of its pixels
    (``bbox_type='poly'``). Connected components use 8-connectivity here (FAST's CUDA CCL
    is not specified further).
    """

    def __init__(self, checkpoint: str, device: str, side: int, min_score: float, min_area: float,
                 pooling_size: int = 7):
        import torch

        from beam_filter.models.base import local_copy, resolve_device

        self.torch = torch
        self.device = resolve_device(device)
        try:
            with warnings.catch_warnings():     # torch 2.x deprecates TorchScript in favour of torch.export
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(local_copy(checkpoint), map_location=self.device).eval()
        except (RuntimeError, ValueError) as e:
            raise UserError(f"fast_checkpoint {checkpoint!r} is not a TorchScript FAST export: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.side, self.min_score, self.min_area = side, min_score, min_area
        self.pool_k, self.pool_pad = pooling_size // 2 + 1, (pooling_size // 2) // 2
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(self.device)

    def _grow(self, x):
        """Nearest to half the input size, max-pool, nearest to the input size (FAST's dilation)."""
        f = self.torch.nn.functional
        half = self.side // 2
        x = f.interpolate(x, size=(half, half), mode="nearest")
        x = f.max_pool2d(x, self.pool_k, stride=1, padding=self.pool_pad)
        return x

    def detect(self, squares: np.ndarray) -> list[tuple[list[np.ndarray], list[float]]]:
        import cv2

        torch, f = self.torch, self.torch.nn.functional
        full = (self.side, self.side)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(squares)).to(self.device)
            x = (x.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
            out = self.net(x)
            logits = (out[0] if isinstance(out, (tuple, list)) else out)[:, 0:1].float()
            score = f.interpolate(torch.sigmoid(self._grow(logits)), size=full, mode="nearest")[:, 0].cpu().numpy()
            kernels = (logits[:, 0] > 0).cpu().numpy().astype(np.uint8)
        results = []
        for k, sc in zip(kernels, score):
            n, lab = cv2.connectedComponents(k, connectivity=8)
            with torch.inference_mode():
                grown = self._grow(torch.from_numpy(lab.astype(np.float32))[None, None])
                labels = f.interpolate(grown, size=full, mode="nearest")[0, 0].numpy().astype(np.int32)
            polys, scores = [], []
            for key in range(1, n):
                m = labels == key
                area = int(m.sum())
                if area == 0 or area < self.min_area:
                    continue
                s_i = float(sc[m].mean())
                if s_i < self.min_score:
                    continue
                contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                c = contours[0].reshape(-1, 2)
                if len(c) < 3:      # a one- or two-pixel-wide instance: its rotated rectangle
                    c = cv2.boxPoints(cv2.minAreaRect(c.astype(np.float32)))
                polys.append(np.asarray(c))
                scores.append(s_i)
            results.append((polys, scores))
        return results


class Recognizer:
    """PP-OCRv4 recogniser (rapidocr's TextRecognizer) over a list of BGR crops."""

    def __init__(self, providers: list[str], batch_size: int, threads: int | None):
        from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

        cfg = {"model_path": rapidocr_model(PPOCR_REC), "use_cuda": "CUDAExecutionProvider" in providers,
               "use_dml": False, "rec_batch_num": batch_size, "rec_img_shape": [3, 48, 320],
               "intra_op_num_threads": threads or -1, "inter_op_num_threads": -1}
        self.rec = TextRecognizer(cfg)

    def read(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        if not crops:
            return []
        res, _ = self.rec(crops)
        return [(str(t), float(s)) for t, s, *_ in res]


# ---------------------------------------------------------------- runner

class TextDetectRunner:
    """Loaded detector + recogniser: what ``load_model`` returns; ``infer`` is thread-safe."""

    def __init__(self, detector: str, device: str, det_size: int | None, det_min_score: float | None,
                 min_area: float | None, rec_batch_size: int, threads: int | None,
                 fast_checkpoint: str | None, recognize: bool = True):
        side0, score0, area0 = DEFAULTS[detector]
        self.side = det_size or side0
        self.min_area = area0 if min_area is None else min_area
        min_score = score0 if det_min_score is None else det_min_score
        providers = ort_providers(device)
        if detector == "fast":
            if not fast_checkpoint:
                raise UserError("detector=fast needs fast_checkpoint (a TorchScript export of FAST)")
            self.detector = FastDetector(fast_checkpoint, device, self.side, min_score, self.min_area)
        else:
            self.detector = PpOcrDetector(providers, self.side, min_score, threads)
        self.pad = 255      # T-MARS pads FAST's input with 255; white suits PP-OCR as well
        self.detector_name = detector
        self.recognizer = Recognizer(providers, rec_batch_size, threads) if recognize else None

    def _decode(self, data: bytes):
        try:
            img = decode(bytes(data), None, draft=False)
            return np.asarray(img.convert("RGB")), None
        except Exception as e:  # untrusted bytes: any decoder failure is a reason, never a crash
            return None, decode_error(e)

    # ---- one decode shared with the model stages next to it (models/shared_decode.py) ----
    def decode_spec(self):
        from beam_filter.models.image_prep import DecodeSpec

        return DecodeSpec(None)               # full size, as _decode

    def views(self, img) -> np.ndarray:
        return np.asarray(img.convert("RGB"))

    def infer_views(self, images: Sequence[bytes], views: Sequence, errors: Sequence) -> list[dict]:
        """:meth:`infer` of images another caller decoded (``views``: :meth:`views` of each)."""
        return self.infer(images, list(zip(views, errors)))

    def infer(self, images: Sequence[bytes], decoded: Sequence | None = None) -> list[dict]:
        if decoded is None:
            decoded = [self._decode(b if b is not None else b"") for b in images]
        ok = [i for i, (rgb, err) in enumerate(decoded) if err is None]
        squares, frames = [], {}
        for i in ok:
            sq, scale, px, py = square_pad(decoded[i][0], self.side, self.pad)
            squares.append(sq)
            frames[i] = (scale, px, py)
        dets = self.detector.detect(np.stack(squares)) if squares else []
        out: list[dict] = []
        crops, owners = [], []
        by_index = dict(zip(ok, dets))
        for i, (rgb, err) in enumerate(decoded):
            if err is not None:
                out.append({"boxes": [], "det_scores": [], "texts": [], "rec_scores": [],
                            "width": 0, "height": 0, "error": err})
                continue
            h, w = rgb.shape[:2]
            scale, px, py = frames[i]
            polys, scores = by_index[i]
            boxes, kept_scores = [], []
            for poly, score in zip(polys, scores):
                p = to_original(poly, scale, px, py, w, h)
                if self.detector_name == "ppocr" and self.min_area and _area(p) < self.min_area:
                    continue
                boxes.append(p)
                kept_scores.append(score)
            rec = {"boxes": boxes, "det_scores": kept_scores, "texts": [""] * len(boxes),
                   "rec_scores": [0.0] * len(boxes), "width": int(w), "height": int(h), "error": None}
            out.append(rec)
            if self.recognizer is not None and boxes:
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                for j, p in enumerate(boxes):
                    crop = crop_quad(bgr, p)
                    if crop is not None:
                        crops.append(crop)
                        owners.append((len(out) - 1, j))
        if crops:
            for (o, j), (text, score) in zip(owners, self.recognizer.read(crops)):
                out[o]["texts"][j] = text
                out[o]["rec_scores"][j] = score
        return out


def _area(poly) -> float:
    from beam_filter.rules.ocr import polygon_area

    return polygon_area(poly)


class TextDetectHandler(ModelHandler):
    """Beam ModelHandler: encoded image bytes -> text polygons, readings and image size.

    ``detector``: ``ppocr`` (default, PyPI weights) or ``fast`` (``fast_checkpoint``, a
    TorchScript export). ``det_size``/``det_min_score``/``min_area``: None = the detector's
    published default (:data:`DEFAULTS`). ``batch_size`` images per detector call.
    """

    def __init__(self, detector: str = "ppocr", device: str = "auto", batch_size: int = 16,
                 det_size: int | None = None, det_min_score: float | None = None,
                 min_area: float | None = None, rec_batch_size: int = 16, threads: int | None = None,
                 fast_checkpoint: str | None = None, recognize: bool = True):
        if detector not in DETECTORS:
            raise UserError(f"unknown text detector {detector!r}: use one of {', '.join(DETECTORS)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive integer, not {batch_size!r}")
        if det_size is not None and (det_size < 32 or det_size % 32):
            raise UserError(f"det_size must be a multiple of 32 (>= 32), not {det_size!r}")
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.detector, self.device, self.batch_size = detector, device, batch_size
        self.det_size, self.det_min_score, self.min_area = det_size, det_min_score, min_area
        self.rec_batch_size, self.threads = rec_batch_size, threads
        self.fast_checkpoint, self.recognize = fast_checkpoint, recognize

    def load_model(self) -> TextDetectRunner:
        return TextDetectRunner(self.detector, self.device, self.det_size, self.det_min_score,
                                self.min_area, self.rec_batch_size, self.threads, self.fast_checkpoint,
                                self.recognize)

    def run_inference(self, batch: Sequence[bytes], model: TextDetectRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return model.infer(list(batch))

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b or b"") for b in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterTextDetect"

