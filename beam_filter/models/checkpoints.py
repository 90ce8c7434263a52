"""Where a model's checkpoint directory comes from: one resolver for every Hugging Face-style model.

A ``model`` parameter may name a local directory, a remote directory (gs://, s3://,
copied once per VM into a cache folder through fsio) or a hub id (``owner/name``,
fetched through huggingface_hub's cache, so ``HF_HUB_OFFLINE`` is honoured). The
MLM-Filter scorer, the sentence encoder (SIEVE), the captioner and BLIP ITM all
resolve their checkpoints here, so they accept the same forms and fail with the
same one-line errors, each naming the parameter to set (``hint``).

Free of heavy imports: stages call :func:`checkpoint_problem` while a recipe is
checked, before any model library is imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from beam_filter import fsio
from beam_filter.errors import UserError
from beam_filter.fsio import is_remote


def cache_root() -> str:
    """Where remote checkpoint directories are copied (``BEAM_FILTER_CACHE``, else the temp dir)."""
    return os.environ.get("BEAM_FILTER_CACHE", os.path.join(tempfile.gettempdir(), "beam_filter_models"))


def copy_remote_dir(path: str) -> str:
    """Copy a checkpoint directory from gs:// / s3:// ... once per VM (through fsio).

    Same idea as ``base.local_copy`` for a whole directory: a cache folder named by the
    path's hash, written under a temporary name and renamed, so concurrent workers on a
    VM never read a half-copied checkpoint.
    """
    root = path.rstrip("/")
    target = os.path.join(cache_root(), hashlib.sha256(root.encode()).hexdigest()[:16]
                          + "-" + os.path.basename(root))
    if os.path.isdir(target):
        return target
    matches = fsio.match(root + "/**")
    if not matches:
        raise UserError(f"model directory {path} is empty or missing")
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root())
    try:
        for match in matches:
            rel = match[len(root) + 1:]
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with fsio.open_read(match) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 16 << 20)
        try:
            os.replace(tmp, target)
        except OSError:          # another worker won the race
            if not os.path.isdir(target):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_problem(model: str) -> str | None:
    """What is wrong with ``model`` as a checkpoint, or None when it is a local directory, a
    remote path or a hub id (``owner/name``; those are fetched when the model loads)."""
    if is_remote(model) or os.path.isdir(model):
        return None
    if os.path.exists(model):
        return "is a file; a checkpoint directory is needed"
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        return "is neither an existing local directory nor a hub id (owner/name)"
    return None


def resolve_model_dir(model: str, hint: str, base_dir: str | None = None) -> str:
    """A local directory holding ``model`` (a path, a remote directory or a hub id).

    ``base_dir``: a relative path is first looked up under it (how LLaVA's ``mm_vision_tower``
    can point inside the checkpoint). ``hint`` says which parameter to set, for the one-line
    error when the model cannot be found.
    """
    if base_dir and not is_remote(model) and os.path.isdir(os.path.join(base_dir, model)):
        return os.path.join(base_dir, model)
    if os.path.isdir(model):
        return model
    if is_remote(model):
        return copy_remote_dir(model)
    problem = checkpoint_problem(model)
    if problem:
        raise UserError(f"model {model!r} {problem}; {hint}")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model)
    except Exception as e:  # network, offline mode, missing repo: one line for the user
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot fetch model {model!r} from the Hugging Face hub ({first}); download it "
                        f"once with network (hf download {model}) or {hint}") from None
