"""What every model loader needs: device choice and fetching weights from any filesystem.

Kept in one place so that every handler fails the same way when a GPU was asked
for and none exists, and reads gs:// or s3:// checkpoints the same way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from beam_filter import fsio
from beam_filter.errors import UserError


def resolve_device(requested: str = "auto"):
    """Return a ``torch.device`` for ``requested`` ('auto', 'cpu', 'cuda', 'cuda:N').

    'auto' picks CUDA when available. Asking for CUDA on a machine without a GPU
    raises :class:`UserError` at load time instead of silently running on the CPU
    (a silent CPU fallback turns a 1-hour GPU job into a 3-day one).
    """
    import torch

    requested = (requested or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") or requested == "gpu":
        if not torch.cuda.is_available():
            raise UserError(
                f"device={requested!r} was asked for but no CUDA GPU is visible "
                "(torch.cuda.is_available() is False); use device=cpu or device=auto"
            )
        return torch.device("cuda" if requested == "gpu" else requested)
    if requested == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N")


PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_precision(precision: str, device) -> str:
    """'auto' -> fp16 on CUDA, fp32 on CPU; fp16/bf16 need CUDA (CPU half kernels are slow or missing)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision in ("fp16", "bf16") and device.type != "cuda":
        raise UserError(f"precision={precision} needs a CUDA device (device is {device}); "
                        "use precision=fp32 or auto on CPU")
    return precision


def torch_dtype(precision: str, device):
    """The torch dtype of :func:`resolve_precision`'s answer."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        resolve_precision(precision, device)]


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """Return a local path for ``path``, copying it once from gs://, s3:// ... (through fsio).

    The copy lands in a cache directory keyed by the path's hash, written to a
    temporary name and renamed, so concurrent workers on one VM never read a half
    written checkpoint.
    """
    if not fsio.is_remote(path):
        if not os.path.exists(path):
            raise UserError(f"model file not found: {path}")
        return path
    cache_dir = cache_dir or os.environ.get(
        "BEAM_FILTER_CACHE", os.path.join(tempfile.gettempdir(), "beam_filter_models")
    )
    os.makedirs(cache_dir, exist_ok=True)
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    target = os.path.join(cache_dir, f"{digest}-{os.path.basename(path)}")
    if os.path.exists(target):
        return target
    fd, tmp = tempfile.mkstemp(dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as out, fsio.open_read(path) as src:
            shutil.copyfileobj(src, out, 16 << 20)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
