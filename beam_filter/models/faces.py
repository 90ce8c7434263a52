"""Face detection as a Beam ModelHandler: image bytes -> normalised face boxes.

Example element: the image bytes. Per example the handler returns
``{"boxes": [[x0, y0, x1, y1], ...] (fractions of width/height), "error": None | reason}``,
the format of DataComp's ``face_bboxes`` (rules/faces.py turns it into area fractions).

Detectors, chosen by the ``detector`` argument:

* ``haar`` (default) -- OpenCV's frontal-face Haar cascade,
  ``haarcascade_frontalface_default.xml`` from ``cv2.data.haarcascades``: the
  opencv-python 4.x wheel ships it (checked: 4.14 has 17 cascades; OpenCV 5 ships
  none, which is why setup.py pins ``opencv-python<5``). Fast on a CPU, no download,
  but weaker than DataComp's detector on small, turned or occluded faces.
* a path (local or gs://) to an **SCRFD** ONNX export (insightface's
  ``scrfd_10g_bnkps.onnx`` and friends; DataComp's ``face_bboxes`` came from SCRFD-10G),
  run with onnxruntime, which rapidocr-onnxruntime already installs. RetinaFace exports
  in SCRFD's output layout (scores, distances per stride) load the same way.
* a path to another ``.xml`` cascade.

Images are decoded with the project's one decoder (``image_prep.decode``; JPEGs at a DCT
scale no smaller than ``max_side``), then shrunk so the longer side is at most
``max_side`` pixels: boxes are fractions, so the scale does not change them, and the
cascade's cost grows with the pixel count. Loading is lazy (``load_model``), once per
worker; an image that does not decode gets ``error`` set and no boxes.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_filter.errors import UserError
from beam_filter.models.base import local_copy

HAAR = "haar"
HAAR_FILE = "haarcascade_frontalface_default.xml"


def haar_cascade_path() -> str:
    """The frontal-face cascade shipped in the opencv-python wheel."""
    import cv2

    path = os.path.join(cv2.data.haarcascades, HAAR_FILE)
    if not os.path.isfile(path):
        raise UserError(f"OpenCV {cv2.__version__} ships no {HAAR_FILE} (cv2.data.haarcascades); "
                        "install opencv-python 4.x or give the face stage an SCRFD .onnx detector path")
    return path


class HaarDetector:
    """OpenCV cascade over the grey image; boxes as fractions of the image."""

    def __init__(self, path: str, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face: float = 0.03):
        import cv2

        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise UserError(f"{path}: not an OpenCV cascade file")
        self.scale_factor, self.min_neighbors, self.min_face = scale_factor, min_neighbors, min_face

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        h, w = rgb.shape[:2]
        grey = self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2GRAY)
        side = max(8, int(round(self.min_face * min(h, w))))
        found = self.cascade.detectMultiScale(grey, scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(side, side))
        return sorted([[x / w, y / h, (x + bw) / w, (y + bh) / h] for x, y, bw, bh in
                       (tuple(int(v) for v in r) for r in (found if len(found) else []))])


class ScrfdDetector:
    """An SCRFD ONNX export (insightface layout) on onnxruntime, CPU or CUDA provider.

    Input: RGB scaled into ``input_size`` x ``input_size`` keeping the aspect ratio (pad at the
    right/bottom), ``(x - 127.5) / 128``. Outputs per stride: scores, then box distances
    (times the stride) from anchor centres, then optional key points; 3 strides (8, 16, 32)
    with 2 anchors or 5 strides with 1. Boxes over ``score_threshold`` go through NMS at
    ``nms_threshold`` (insightface's defaults: 0.5, 0.4).
    """

    def __init__(self, path: str, score_threshold: float = 0.5, nms_threshold: float = 0.4,
                 input_size: int = 640, device: str = "cpu"):
        import onnxruntime as ort

        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda")
                     else ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(local_copy(path), providers=providers)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise UserError(f"{path}: cannot load as an ONNX face detector ({str(e).splitlines()[0]})") from None
        self.input_name = self.session.get_inputs()[0].name
        n_out = len(self.session.get_outputs())
        if n_out in (6, 9):
            self.strides, self.anchors = (8, 16, 32), 2
        elif n_out in (10, 15):
            self.strides, self.anchors = (8, 16, 32, 64, 128), 1
        else:
            raise UserError(f"{path}: {n_out} outputs; an SCRFD face detector has 6, 9, 10 or 15")
        self.size, self.score_threshold, self.nms_threshold = input_size, score_threshold, nms_threshold

    def detect(self, rgb: np.ndarray) -> list[list[float]]:
        from PIL import Image

        h, w = rgb.shape[:2]
        scale = self.size / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        canvas = np.zeros((self.size, self.size, 3), np.float32)
        canvas[:nh, :nw] = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR),
                                      np.float32)
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outs = self.session.run(None, {self.input_name: blob})
        return decode_scrfd(outs, self.strides, self.anchors, self.size, scale, w, h,
                            self.score_threshold, self.nms_threshold)


def decode_scrfd(outs, strides, anchors: int, size: int, scale: float, width: int, height: int,
                 score_threshold: float = 0.5, nms_threshold: float = 0.4) -> list[list[float]]:
    """SCRFD outputs -> normalised boxes of the original ``width`` x ``height`` image.

    ``outs``: scores of each stride, then box distances (left, top, right, bottom, in units of
    the stride) of each stride; anchor centres are the stride grid's corners, ``anchors`` per
    cell; ``scale``: input-square pixels per original pixel. Boxes over ``score_threshold``,
    then greedy NMS at ``nms_threshold``.
    """
    fmc = len(strides)
    boxes, scores = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.float32)]
    for i, stride in enumerate(strides):
        sc = np.asarray(outs[i]).reshape(-1)
        dist = np.asarray(outs[i + fmc]).reshape(-1, 4) * stride
        g = size // stride
        ys, xs = np.mgrid[:g, :g]
        centres = np.repeat(np.stack([xs.ravel(), ys.ravel()], 1) * stride, anchors, axis=0)
        n = min(len(sc), len(dist), len(centres))
        keep = np.nonzero(sc[:n] >= score_threshold)[0]
        c, d = centres[keep].astype(np.float32), dist[keep]
        boxes.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2],
                               c[:, 1] + d[:, 3]], 1) / scale)
        scores.append(sc[keep])
    b, s = np.concatenate(boxes), np.concatenate(scores)
    out = []
    for i in nms(b, s, nms_threshold):
        x0, y0, x1, y1 = b[i]
        out.append([float(x0) / width, float(y0) / height, float(x1) / width, float(y1) / height])
    return sorted(out)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (highest score first, ties by index): kept indices."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    for i in order:
        ok = True
        for j in kept:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(0.0, iw) * max(0.0, ih)
            union = area[i] + area[j] - inter
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def load_detector(detector: str, **options):
    """``haar``, a cascade ``.xml`` path, or an SCRFD ``.onnx`` path -> an object with ``detect(rgb)``."""
    if detector == HAAR:
        return HaarDetector(haar_cascade_path(), **_only(options, "scale_factor", "min_neighbors", "min_face"))
    if detector.endswith(".xml"):
        return HaarDetector(local_copy(detector), **_only(options, "scale_factor", "min_neighbors", "min_face"))
    if detector.endswith(".onnx"):
        return ScrfdDetector(detector, **_only(options, "score_threshold", "input_size", "device"))
    raise UserError(f"face detector {detector!r}: use 'haar', a cascade .xml or an SCRFD .onnx path")


def _only(options: dict, *names: str) -> dict:
    return {k: v for k, v in options.items() if k in names and v is not None}


def image_rgb(data: bytes, max_side: int) -> np.ndarray:
    """Decode with image_prep's decoder, longer side shrunk to ``max_side``; uint8 HxWx3."""
    from beam_filter.models.image_prep import PrepConfig, decode

    return shrink_rgb(decode(data, PrepConfig(max_side, (0.0,) * 3, (1.0,) * 3), draft=True), max_side)


def shrink_rgb(img, max_side: int) -> np.ndarray:
    """A decoded image, longer side shrunk to ``max_side`` (bilinear), as uint8 HxWx3."""
    from PIL import Image

    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"))


class FaceRunner:
    """The loaded detector: ``infer(list of image bytes)`` -> per-image boxes."""

    def __init__(self, detector: str, max_side: int, options: dict):
        self.detector = load_detector(detector, **options)
        self.max_side = max_side

    # ---- one decode shared with the model stages next to it (models/shared_decode.py) ----
    def decode_spec(self):
        from beam_filter.models.image_prep import DecodeSpec

        return DecodeSpec(self.max_side)      # image_rgb's JPEG draft at max_side

    def views(self, img) -> np.ndarray:
        return shrink_rgb(img, self.max_side)

    def infer_views(self, images: Sequence[bytes], views: Sequence, errors: Sequence) -> list[dict]:
        """:meth:`infer` of images another caller decoded (``views``: :meth:`views` of each)."""
        return [{"boxes": [], "error": err} if err is not None else {"boxes": self.detector.detect(rgb), "error": None}
                for rgb, err in zip(views, errors)]

    def infer(self, images: Sequence[bytes]) -> list[dict]:
        from beam_filter.models.image_prep import decode_error

        out = []
        for data in images:
            try:
                rgb = image_rgb(bytes(data or b""), self.max_side)
            except Exception as e:  # noqa: BLE001 - one bad image never fails the batch
                out.append({"boxes": [], "error": decode_error(e)})
                continue
            out.append({"boxes": self.detector.detect(rgb), "error": None})
        return out


class FaceModelHandler(ModelHandler):
    """Beam ModelHandler: image bytes -> ``{"boxes", "error"}`` (see the module docstring)."""

    def __init__(self, detector: str = HAAR, max_side: int = 640, batch_size: int = 32, **options: Any):
        if not detector:
            raise UserError("face detector is empty: use 'haar' or a detector path")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, not {batch_size!r}")
        super().__init__(min_batch_size=1, max_batch_size=batch_size)
        self.detector, self.max_side, self.options = detector, max_side, dict(options)

    def load_model(self) -> FaceRunner:
        return FaceRunner(self.detector, self.max_side, self.options)

    def run_inference(self, batch: Sequence[bytes], model: FaceRunner,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        return model.infer(list(batch))

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b or b"") for b in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamFilterFaces"
