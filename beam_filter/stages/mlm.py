"""The ``mlm`` stage: MLM-Filter quality scores (score phase) and thresholds on them (select phase).

Score: one RunInference over ``(image bytes, caption)`` with the transformers or vLLM
handler; columns ``{id}_{metric}_score`` (``mlm_<metric>_score`` for the default id),
int or None (unparsable answer). An undecodable image sets ``read_error=corrupt_image``.

Select (the rules: ``rules/mlm.py``): keep a row when every filtered metric passes. A metric is filtered by
``thresholds: {metric: int}`` (keep score >= threshold; several metrics = AND, the
MLM-Filter README's ITM >= 66 AND ODF >= 20), or by the ``metric`` + ``threshold`` /
``fraction`` shorthand. A fraction keeps the top share of the pool with the rank-n rule
of the MLM-Filter reference (ties at the threshold kept with probability (n - #above) / #equal,
seeded). A row whose filtered score is None is dropped with ``mlm_unparsable`` (the
reference rejects what ``int()`` refuses); a low one with ``mlm_<metric>_below_threshold``.

Only the metrics that are filtered on are scored unless ``metrics`` says otherwise:
each metric is a full generation pass, so scoring all four costs four times as much.
"""

from __future__ import annotations

import os
from typing import Any

from beam_filter.errors import UserError
from beam_filter.models import mlm_prompts as P
from beam_filter.columns import need
from beam_filter.registry import Param, RankSpec, ScoredStage, register
from beam_filter.rules.mlm import rank_reason, threshold_reason
from beam_filter.stages.score_cut import fraction_ok

DEFAULT_MODEL = "weizhiwang/mlm-filter-qwen2.5-1.5b-gpt4o"
TINY_DIR = "mlm_filter_tiny"


@register
class MLMFilter(ScoredStage):
    """MLM-Filter (Wang et al. 2024): a fine-tuned multimodal LM rates each pair 0-100 per metric."""

    name = "mlm"
    description = "MLM-Filter quality scores (ITM, ODF, CTQ, SU) and thresholds on them"
    params = {
        "metrics": Param(list, None, "metrics to score (default: the filtered ones, else all four); "
                         f"names: {', '.join(P.METRICS)} or itm/odf/ctq/su"),
        "thresholds": Param(dict, None, "keep when score >= value for EVERY metric listed, "
                            "e.g. {image_text_matching: 66, object_detail_fulfillment: 20}"),
        "metric": Param(str, None, "the one metric filtered by threshold or fraction"),
        "threshold": Param((int, float), None, "keep when metric score >= this"),
        "fraction": Param(float, None, "keep this top fraction of the pool by metric (rank-n rule)",
                          check=fraction_ok, check_msg="must be in (0, 1]"),
        "seed": Param(int, 0, "seed of the tie-break at the fraction's threshold"),
        "backend": Param(str, "transformers", "inference engine", choices=("transformers", "vllm")),
        "model": Param(str, DEFAULT_MODEL, "hub id, local directory or gs:// directory of the checkpoint"),
        "device": Param(str, "auto", "auto, cpu, cuda or cuda:N (cuda without a GPU is an error)"),
        "batch_size": Param(int, 16, "pairs per generate call", check=lambda v: v >= 1,
                            check_msg="must be >= 1"),
        "precision": Param(str, "auto", "auto (fp16 on GPU as the reference, fp32 on CPU), fp32, fp16, bf16",
                           choices=("auto", "fp32", "fp16", "bf16")),
        "max_new_tokens": Param(int, P.DEFAULT_MAX_NEW_TOKENS,
                                "greedy tokens generated (3 reads 100 whole; the reference used 2)",
                                check=lambda v: v >= 1, check_msg="must be >= 1"),
        "max_len": Param(int, P.DEFAULT_MAX_LEN, "prompt ids kept (the reference's truncation)",
                         check=lambda v: v >= 16, check_msg="must be >= 16"),
    }

    def __init__(self, stage_id: str, params: dict[str, Any]):
        super().__init__(stage_id, params)
        p = self.p
        self.thresholds: dict[str, float] = {}
        self.rank_metric: str | None = None
        if p.thresholds is not None:
            if p.metric is not None or p.threshold is not None or p.fraction is not None:
                raise UserError(f"stage {stage_id!r}: use either thresholds or metric + threshold/fraction")
            for name, value in p.thresholds.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"stage {stage_id!r}: thresholds.{name}={value!r} is not a number")
                self.thresholds[P.canonical_metric(name)] = value
        elif p.threshold is not None or p.fraction is not None or p.metric is not None:
            if (p.threshold is None) == (p.fraction is None):
                raise UserError(f"stage {stage_id!r}: give exactly one of threshold or fraction")
            metric = p.metric
            if metric is None:
                scored = P.canonical_metrics(p.metrics) if p.metrics else ()
                if len(scored) != 1:
                    raise UserError(f"stage {stage_id!r}: name the metric to filter on "
                                    f"(metric: one of {', '.join(P.METRICS)})")
                metric = scored[0]
            metric = P.canonical_metric(metric)
            if p.threshold is not None:
                self.thresholds[metric] = p.threshold
            else:
                self.rank_metric = metric
        filtered = set(self.thresholds) | ({self.rank_metric} if self.rank_metric else set())
        if p.metrics:
            self.scored = P.canonical_metrics(p.metrics)
            missing = filtered - set(self.scored)
            if missing:
                raise UserError(f"stage {stage_id!r}: filters on {', '.join(sorted(missing))} "
                                "but metrics does not score it")
        else:
            self.scored = tuple(m for m in P.METRICS if m in filtered) or P.METRICS
        self.columns = {m: f"{stage_id}_{m}_score" for m in P.METRICS}

    def check_weights(self) -> None:
        """A local checkpoint directory that does not exist, or a hub id that cannot load
        offline, fails when the CLI loads the recipe, naming the parameter to set."""
        from beam_filter.models.mlm_filter import hub_cache_problem, local_checkpoint_problem

        problem = local_checkpoint_problem(self.p.model) or hub_cache_problem(self.p.model)
        if problem:
            raise UserError(f"stage {self.id!r}: model={self.p.model!r} {problem}; set --set "
                            f"{self.id}.model=DIR (an MLM-Filter checkpoint directory) or a hub id")

    # ---- columns -----------------------------------------------------------
    def score_columns(self) -> tuple[str, ...]:
        return tuple(self.columns[m] for m in self.scored)

    def needs(self):
        filtered = [m for m in P.METRICS if m in self.thresholds or m == self.rank_metric]
        return tuple(need(self.columns[m], what=f"the MLM-Filter {m} score") for m in filtered)

    # ---- score phase ------------------------------------------------------
    def model_handler(self):
        p = self.p
        kwargs = dict(model=p.model, metrics=self.scored, device=p.device, batch_size=p.batch_size,
                      precision=p.precision, max_new_tokens=p.max_new_tokens, max_len=p.max_len)
        if p.backend == "vllm":
            from beam_filter.models.mlm_vllm import MLMVLLMModelHandler

            return MLMVLLMModelHandler(**kwargs)
        from beam_filter.models.mlm_filter import MLMFilterModelHandler

        return MLMFilterModelHandler(**kwargs)

    def model_input(self, sample):
        return (sample.image, sample.caption)

    def model_columns(self, inference) -> dict:
        cols = {self.columns[m]: inference.get(m) for m in self.scored}
        if inference.get("error"):
            cols["read_error"] = inference["error"]
        return cols

    def score_config(self) -> dict:
        p = self.p
        return {"metrics": list(self.scored), "backend": p.backend, "model": p.model,
                "precision": p.precision, "max_new_tokens": p.max_new_tokens, "max_len": p.max_len}

    # ---- select phase -----------------------------------------------------
    def needs_global_info(self) -> bool:
        return self.rank_metric is not None

    def rank_spec(self) -> RankSpec | None:
        if self.rank_metric is None:
            return None
        column = self.columns[self.rank_metric]
        return RankSpec(column, self.p.fraction, column)

    def reason(self, row: dict, info: Any = None) -> str | None:
        why = threshold_reason(row, self.columns, self.thresholds)
        if why is not None or self.rank_metric is None:
            return why
        return self._rank_reason(row, info)

    def _rank_reason(self, row: dict, info: Any) -> str | None:
        col = self.columns[self.rank_metric]
        if col not in row:
            raise UserError(f"mlm: column {col!r} is missing; score these rows with the mlm stage")
        return rank_reason(row[col], info, row.get("uid"), self.p.seed, self.rank_metric)

    # ---- offline smoke tests ------------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        from beam_filter.devtools.tiny_models import write_tiny_mlm

        write_tiny_mlm(os.path.join(directory, TINY_DIR))
        return True

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {"model": os.path.join(directory, TINY_DIR), "backend": "transformers",
                "device": "cpu", "precision": "fp32"}

    def provenance(self) -> dict:
        return {"type": self.name, "params": self.config, "metrics_scored": list(self.scored),
                "columns": [self.columns[m] for m in self.scored]}
