"""``--inject-blur-metadata``: face boxes into each written sample's json, as DataComp's resharder does.

DataComp's resharder, asked with ``--inject-blur-metadata``, looks up each kept sample's
face boxes in the pool's metadata parquet (by uid) and writes them into the sample's json
as ``face_bboxes`` (a list of ``[x0, y0, x1, y1]``, normalised), leaving samples without a
face as they are. Here the boxes come from

1. ``--blur-metadata DIR``: DataComp metadata parquets (``uid``, ``face_bboxes``), looked up
   by the uid the sample's decision row recorded; loaded once per writer process (only rows
   with a face are kept in memory: a uid and its boxes);
2. else the scores beside the decisions (the ``face_area`` stage's ``*_bboxes`` column,
   ``output_blur.ScoreBoxes``).

The hook wraps the ``--apply-blur`` one (output_blur.FaceBlur) when both are asked: boxes
are injected first, then the image is blurred. The json is rewritten in place (the
writer counts a sample as blurred only when the blur hook returns new members).
"""

from __future__ import annotations

import json
from typing import Any

from beam_filter.rules.faces import decode_boxes

KEY = "face_bboxes"


class InjectBlurMetadata:
    """What the reshard writer calls per sample: ``members(shard, key, members) -> members``."""

    def __init__(self, scores_root: str | None, metadata_dir: str | None = None, then=None):
        from beam_filter.output_blur import ScoreBoxes

        self.scores_root, self.metadata_dir, self.then = scores_root, metadata_dir, then
        self.score_boxes = ScoreBoxes(scores_root)

    def describe(self) -> dict:
        return {"inject_blur_metadata": True,
                "boxes": f"metadata {self.metadata_dir} (uid, {KEY})" if self.metadata_dir
                else "the scores' *_bboxes column (face_area stage)"}

    def _boxes_for(self, shard: str, key: str, members) -> Any:
        if self.metadata_dir:
            uid = _json_uid(members)
            return metadata_boxes(self.metadata_dir).get(uid) if uid else None
        return self.score_boxes.get(shard, key)

    def members(self, shard: str, key: str, members: dict) -> dict:
        boxes = decode_boxes(self._boxes_for(shard, key, members))
        if boxes and "json" in members:
            try:
                meta = json.loads(members["json"])
            except ValueError:
                meta = None
            if isinstance(meta, dict):
                meta[KEY] = [list(b) for b in boxes]
                members["json"] = json.dumps(meta).encode()
        return self.then.members(shard, key, members) if self.then is not None else members


def _json_uid(members) -> str | None:
    try:
        uid = json.loads(members["json"]).get("uid")
    except Exception:  # noqa: BLE001 - no json, not a dict: no uid to look up
        return None
    return str(uid).lower().rjust(32, "0") if isinstance(uid, str) else None


def metadata_boxes(directory: str) -> dict[str, Any]:
    """{uid: face_bboxes} of the rows with a face in a DataComp metadata dir, once per process."""
    from beam_filter.process_cache import once_per_process

    def load():
        from beam_filter import tables
        from beam_filter.datacomp_metadata import list_metadata_files

        out = {}
        for path, _ in list_metadata_files(directory):
            t = tables.read_table(path, ["uid", KEY]).to_pydict()
            for uid, boxes in zip(t["uid"], t[KEY]):
                if boxes:
                    out[str(uid).lower().rjust(32, "0")] = boxes
        return out

    return once_per_process("blur_metadata", directory, load)


def inject_hook(job, blur=None):
    """The writer hook for ``job``: InjectBlurMetadata (wrapping ``blur``) when asked, else ``blur``."""
    if not getattr(job, "inject_blur_metadata", False):
        return blur
    if job.command == "reshard" and job.decision_files:
        root = job.decision_files[0].rsplit("/", 2)[0]
    else:
        root = job.output
    return InjectBlurMetadata(root, getattr(job, "blur_metadata", None), then=blur)
