"""The stage registry: recipe names -> Stage classes of three declared kinds, with parameters and columns.

A *stage* is what a recipe lists. It adapts plain rule/score functions (in
``beam_filter/rules``, ``beam_filter/cluster``) and model handlers (in
``beam_filter/models``) to the pipeline; counting, reasons and rejects are the
framework's job (``selection.py``, ``transforms/``). Every stage is one of three
kinds, each a small base class with only the hooks that kind has (in the spirit
of Beam's ``ModelHandler``: a few required methods, optional hooks with
defaults). The pipeline asks a stage its kind with ``isinstance``; it never
probes which methods a subclass overrides.

``RuleStage`` -- a per-row rule (datatrove's ``filter(doc)``):
    ``reason(row) -> str | None``          required: why the row is dropped, or None.
    ``features(sample) -> dict``           optional: cheap columns computed from the bytes
                                           in the score phase; declared by ``feature_columns()``.

``ScoredStage`` -- a score per row, then a threshold or an exact top fraction:
    ``model_handler() / model_input(sample) / model_columns(output)``
                                           the Beam ModelHandler run through RunInference,
                                           what it gets for a sample, the columns made from
                                           its output (declared by ``score_columns()``).
    ``global_info(alive_rows)``            optional: one value from the rows still alive
                                           (e.g. the score at the top-30% rank), or None.
    ``reason(row, info) -> str | None``    required: the threshold applied.

``GroupStage`` -- verdicts for groups of rows (dedup, clustering, duplication):
    ``verdicts(alive_rows) -> PCollection[(row token, Verdict)]`` required; its Beam
        wiring lives in ``transforms/``; rows it does not mention stay as they were.
        Tokens name samples (identity.py).

Every kind declares its columns (``columns.py`` checks a recipe against them
before any Beam work): ``needs()`` lists what the select phase reads, and
``feature_columns()``/``score_columns()``/``verdict_columns()`` what the stage
adds. Conventions:
  * model outputs are named after the stage id (``{id}_score``), plain features
    after what they are (``lang``);
  * a column whose value is a 1-D numpy array is an *embedding*: the score phase
    stores it fp16 in ``embeddings/<shard>.npz`` instead of parquet, and select gives
    it back to rows as a float32 numpy array;
  * ``features``/``model_columns`` may set ``read_error`` (e.g. "corrupt_image") to
    drop a sample that turns out unusable; its decision reason is that error.

Offline smoke tests (``beam-filter make-test-models`` / ``--test-models DIR``):
``write_test_model(dir)`` writes tiny randomly initialised checkpoints with the real
architecture and returns True; ``test_model_params(dir)`` gives the parameter
overrides that swap the stage's model for that twin.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, ClassVar, NamedTuple

from beam_filter.errors import UserError

_STAGES: dict[str, type["Stage"]] = {}


@dataclasses.dataclass(frozen=True)
class Param:
    """A declared stage parameter: its type, default and what it means."""

    type: type | tuple = str
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    required: bool = False
    check: Callable[[Any], bool] | None = None   # extra validation, e.g. 0 < f <= 1
    check_msg: str = ""
    # False for a parameter added after its stage type shipped: while it has its default it is left
    # out of the recipe's canonical text (Stage.canonical_config), so adding it changes no existing
    # recipe's hash, and outputs made before stay byte-identical (decisions carry the hash).
    hash_at_default: bool = True

    def coerce(self, stage: str, name: str, value: Any) -> Any:
        """Validate ``value`` (from YAML or ``--set``) and convert it to the declared type."""
        if value is None:
            if self.required:
                raise UserError(f"stage {stage!r}: parameter {name!r} is required")
            return None
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            value = _convert(stage, name, value, types)
        if not _finite(value):
            raise UserError(f"stage {stage!r}: {name}={value!r} must be a finite number (not NaN or infinity)")
        if self.choices is not None and value not in self.choices:
            raise UserError(f"stage {stage!r}: {name}={value!r} is not one of {list(self.choices)}")
        if self.check is not None and not self.check(value):
            raise UserError(f"stage {stage!r}: {name}={value!r} {self.check_msg or 'is out of range'}")
        return value


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a value (lists and dicts included).

    YAML reads ``.nan`` and ``.inf`` as floats, and every comparison with NaN is
    false: ``threshold: .nan`` would keep every row without a word.
    """
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _convert(stage: str, name: str, value: Any, types: tuple) -> Any:
    for t in types:
        try:
            if t is bool:
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                    return value.lower() in ("true", "1", "yes")
                continue
            if t is list:
                if isinstance(value, str):
                    return [v for v in value.split(",") if v]
                if isinstance(value, (tuple, list)):
                    return list(value)
                continue
            if t in (int, float) and isinstance(value, bool):
                continue
            if t is int and isinstance(value, float) and not value.is_integer():
                continue
            return t(value)
        except (TypeError, ValueError):
            continue
    names = "/".join(t.__name__ for t in types)
    raise UserError(f"stage {stage!r}: {name}={value!r} is not a valid {names}")


class Stage:
    """What every kind has: a name, declared parameters, an id, and declared columns.

    Not subclassed directly by stages: use :class:`RuleStage`, :class:`ScoredStage`
    or :class:`GroupStage`.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    description: ClassVar[str] = ""
    # Names of the parameters that change what the score phase computes (model,
    # pretrained, ...). None = all of them. Thresholds belong to select and are
    # left out, so changing one reuses the scores already on disk.
    score_params: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, stage_id: str, params: dict[str, Any]):
        self.id = stage_id
        # Attribute access to parameters (self.p.threshold); a SimpleNamespace pickles
        # with plain pickle, which local process pools and Dataflow both rely on.
        self.p = types.SimpleNamespace(**params)
        self.config = dict(params)

    def canonical_config(self) -> dict:
        """The parameters as the recipe's canonical text (and so its hash) records them: all of
        them, except a later-added one (``Param.hash_at_default=False``) still at its default."""
        declared = type(self).params or {}
        return {k: v for k, v in self.config.items()
                if not (k in declared and not declared[k].hash_at_default and v == declared[k].default)}

    # ---- columns (checked by columns.py before any work) -----------------
    def needs(self) -> tuple:
        """``columns.Need`` s: the columns the select phase reads from rows."""
        return ()

    def feature_columns(self) -> tuple[str, ...]:
        """Columns ``features(sample)`` adds in the score phase; empty: it is never called."""
        return ()

    def features(self, sample) -> dict | None:
        return None

    def produced_columns(self) -> tuple[str, ...]:
        """Every column the score phase adds for this stage."""
        return self.feature_columns()

    def verdict_columns(self) -> tuple[str, ...]:
        """Columns the select phase adds to rows (a GroupStage's verdict columns)."""
        return ()

    @property
    def is_model_stage(self) -> bool:
        return False

    def score_config(self) -> dict | None:
        """What the score phase of this stage depends on; None when it computes nothing."""
        if not self.feature_columns() and not self.is_model_stage:
            return None
        names = self.score_params if self.score_params is not None else tuple(self.config)
        return {k: self.config.get(k) for k in names}

    # ---- offline smoke tests ---------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> bool:
        """Write this stage's tiny model twin under ``directory``; True when there is one."""
        return False

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {}

    def provenance(self) -> dict:
        """What the report and meta.json say about this stage (models, checksums ...)."""
        return {"type": self.name, "params": self.config}

    def fixed_cut(self) -> tuple[str, float] | None:
        """(column, threshold) of a fixed cut this stage applies, drawn on that column's report
        histogram (a top fraction's threshold comes from thresholds/ instead); None: none."""
        return None

    # ---- columnar select (columnar.py) ---------------------------------------
    def reason_array(self, part, alive, info: Any = None):
        """Optional vectorised ``reason``: an object ndarray (one ``str | None`` per row of ``part``,
        a ``columnar.PartColumns``: one select part as Arrow columns, never rows) giving exactly
        what ``reason(row, info)`` gives; rows outside the bool mask ``alive`` are ignored (a hint to
        skip work). None: no hook here (the default, or a column it cannot read as arrays), and
        select builds rows instead. Lets select decide a 50k-row part without 50k dicts."""
        return None


class RuleStage(Stage):
    """A per-row rule: optional ``features(sample)`` from the bytes, then ``reason(row)``.

    A recipe made only of rules runs fused, per shard, with no shuffle at all.
    """

    kind = "rule"

    def reason(self, row: dict, info: Any = None) -> str | None:
        raise NotImplementedError(f"{type(self).__name__}.reason")

    def copies(self, row: dict) -> int | None:
        """Optional: how many times a row this rule keeps is written (a uid listed k times in a
        DataComp subset, a source's copy count); None = no opinion. Multiplies the row's count."""
        return None

    def copies_array(self, part, rows):
        """Vectorised ``copies`` for the row indices ``rows`` of ``part`` (columnar.py): an int
        ndarray, 1 where ``copies`` has no opinion; None: every row has none (the default)."""
        return None


class RankSpec(NamedTuple):
    """A top-fraction stage's global value: DataComp's rank-n threshold of ``value`` (a row column,
    or a picklable ``row -> number``) over the rows alive at the stage; ``label`` names it in the
    report (``ThresholdInfo.column``)."""

    value: Any
    fraction: float
    label: str | None = None
    # For a callable ``value``: the columns it reads, in order (a row's value is the first of them the
    # row has). A column name ``value`` is its own. Known, a stage first in the recipe is ranked from
    # that one column of each part, without building rows.
    columns: tuple = ()


class SummarySpec(NamedTuple):
    """A global value made in two steps from the rows alive at the stage: a small summary of them that
    combines across input parts (fused_rank: each score column's [min, max]), then -- with a
    ``fraction`` -- DataComp's rank-n threshold of a per-row ``value`` that depends on the summary.
    Declared, so select computes it part by part (one read for the summaries, one for the rank keys,
    ``selection.is_summary_staged``, transforms/part_ranges.py) and no row moves. Every callable is
    picklable and Beam-free; ``global_info`` must compute the same value on the general graph."""

    summarize: Callable         # alive rows of one part (list of row dicts) -> summary
    combine: Callable           # list of summaries -> one (associative, any order; [] -> the empty one)
    finish: Callable            # (pool summary, ThresholdInfo | None) -> the ``info`` ``reason`` takes
    value: Any = None           # (row, pool summary) -> the number ranked when ``fraction`` is set
    fraction: float | None = None
    label: str | None = None    # ThresholdInfo.column of the rank step
    # Optional columnar twins (columnar.py), exactly equal or None (then the part builds rows):
    summarize_array: Callable | None = None    # (columnar.PartColumns, bool mask alive) -> summary
    value_array: Callable | None = None        # (columnar.PartColumns, pool summary) -> float64 per row


class ScoredStage(Stage):
    """A score per row (from a model through RunInference), then a threshold or a top fraction."""

    kind = "scored"

    @property
    def is_model_stage(self) -> bool:
        return True

    def score_columns(self) -> tuple[str, ...]:
        """Columns ``model_columns`` adds (declared, so recipes can be checked before scoring)."""
        return ()

    def produced_columns(self) -> tuple[str, ...]:
        return self.feature_columns() + self.score_columns()

    def model_handler(self):
        raise NotImplementedError(f"{type(self).__name__}.model_handler")

    def model_input(self, sample) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.model_input")

    def model_columns(self, inference) -> dict:
        raise NotImplementedError(f"{type(self).__name__}.model_columns")

    def shares_decode(self) -> bool:
        """True when this stage's model may share one image decode with the model stages next to
        it (``models/shared_decode.py``): its model decodes ``sample.image`` and its ``model_input``
        is built from the sample alone (no column of an earlier model stage); the loaded model provides
        ``decode_spec``/``views``/``infer_views``. Two or more such stages in a row run as one step."""
        return False

    def needs_global_info(self) -> bool:
        """Whether ``global_info`` computes something for these parameters (a top fraction does,
        a fixed threshold does not); without one the stage decides each row alone."""
        return True

    def rank_spec(self) -> "RankSpec | None":
        """When the global value is DataComp's rank-n threshold of one number per alive row (a top
        fraction), say so declaratively: ``global_info`` then computes it with
        ``transforms/thresholds.ExactRankThreshold``, and ``select`` can compute it from per-part keys
        without moving any row (``selection.is_rank_staged``, pipeline's fused select)."""
        return None

    def summary_spec(self) -> "SummarySpec | None":
        """When the global value is not one rank-n threshold but starts from a small summary of the
        alive rows that combines over parts (:class:`SummarySpec`), say so: select then computes it
        by parts too. Consulted only when :meth:`rank_spec` is None."""
        return None

    def global_info(self, alive_rows):
        """One value computed from every row still alive when the stage is reached, or None.

        The default computes :meth:`rank_spec`'s exact threshold; override only for another kind
        of global value (the fused select then falls back to the general graph)."""
        spec = self.rank_spec()
        if spec is None:
            return None
        from beam_filter.transforms.thresholds import ExactRankThreshold

        return alive_rows | f"{self.id}/RankThreshold" >> ExactRankThreshold(
            spec.value, spec.fraction, label_column=spec.label)

    def reason(self, row: dict, info: Any = None) -> str | None:
        raise NotImplementedError(f"{type(self).__name__}.reason")


class GroupStage(Stage):
    """Verdicts for groups of rows; the Beam wiring is a PTransform of ``transforms/``."""

    kind = "group"
    # True when each row's verdict depends on that row alone, computed in batches (a
    # nearest-centroid search): ``batch_verdicts(rows)`` then gives the same verdicts as
    # ``verdicts``, and select can run the stage inside one input part, with no shuffle.
    row_wise: ClassVar[bool] = False

    def verdicts(self, alive_rows):
        raise NotImplementedError(f"{type(self).__name__}.verdicts")

    def batch_verdicts(self, rows: list[dict]) -> list:
        """(row token, Verdict) pairs for a batch of alive rows (``row_wise`` stages only)."""
        raise NotImplementedError(f"{type(self).__name__}.batch_verdicts")

    def verdict_reasons_array(self, part, alive):
        """Vectorised ``batch_verdicts`` of a row-wise stage for the rows where the bool mask
        ``alive`` holds (columnar.py): an object ndarray of drop reasons (None: no verdict or a
        keep), the same as the verdicts would give. None: no hook (the default; a stage whose
        verdicts carry columns or copies keeps it so), and select builds rows instead."""
        return None


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` available to recipes under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must subclass RuleStage, ScoredStage or GroupStage")
    if cls.name in _STAGES and _STAGES[cls.name] is not cls:
        raise ValueError(f"stage name {cls.name!r} registered twice")
    _STAGES[cls.name] = cls
    return cls


def stage_class(name: str) -> type[Stage]:
    _load_builtin_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise UserError(f"unknown stage type {name!r}; known: {', '.join(sorted(_STAGES))}") from None


def all_stages() -> dict[str, type[Stage]]:
    _load_builtin_stages()
    return dict(_STAGES)


def build_stage(stage_id: str, type_name: str, raw_params: dict[str, Any]) -> Stage:
    """Validate ``raw_params`` against the declared parameters and build the stage."""
    cls = stage_class(type_name)
    unknown = sorted(set(raw_params) - set(cls.params))
    if unknown:
        raise UserError(
            f"stage {stage_id!r} ({type_name}): unknown parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(cls.params)) or '(none)'}")
    values = {name: spec.coerce(stage_id, name, raw_params.get(name, spec.default))
              for name, spec in cls.params.items()}
    return cls(stage_id, values)


def _load_builtin_stages() -> None:
    """Import every module of ``beam_filter.stages`` once, so their @register runs."""
    import importlib
    import pkgutil

    import beam_filter.stages as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
