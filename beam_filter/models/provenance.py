"""What report.json says about a model's files, without importing the model's libraries.

Describing a stage must not cost what loading it does: ``finalize`` asks every
model stage for its provenance after a ``select --metadata`` that never loaded a
model, and importing ``models/clip.py`` (Beam's RunInference, hence torch) to
reach a few ``os.path`` checks took 3.7 s of it. Only the standard library and
fsio are imported here.
"""

from __future__ import annotations

import os
from typing import Any

from beam_filter.fsio import file_sha256, is_remote


def clip_provenance(model: str, pretrained: str | None) -> dict:
    """What the report says about a CLIP model: names, and sha256 of local files.

    Remote (gs://) files are not downloaded for this; their path is the record.
    """
    out: dict[str, Any] = {"name": model, "pretrained": pretrained}
    if model.endswith(".json") and not is_remote(model) and os.path.isfile(model):
        out["config_sha256"] = file_sha256(model)
    if pretrained and not is_remote(pretrained) and os.path.isfile(pretrained):
        out["checkpoint_sha256"] = file_sha256(pretrained)
    return out
