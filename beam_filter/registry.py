"""The stage registry: recipe names -> Stage classes, with declared parameters.

A *stage* is what a recipe lists. It adapts plain rule/score functions (in
``beam_filter/rules``) and model handlers (in ``beam_filter/models``) to the
three phases, so a new rule means one small class here and one pure function
there; counting, reasons and rejects are the framework's job (transforms/).

Hooks a stage may override (all optional):

score phase (runs where the bytes are, per sample)
    ``features(sample) -> dict``          cheap CPU columns, pure.
    ``model_handler() -> ModelHandler``   a Beam ModelHandler run through RunInference,
    ``model_input(sample)``               ... the element given to it for a sample,
    ``model_columns(inference) -> dict``  ... and the columns made from its output.

select phase (runs on rows without bytes)
    ``global_info(alive_rows) -> PCollection`` one value computed from every row still
        alive when the stage is reached (e.g. the exact top-30% threshold); it is
        passed to ``reason`` as ``info``.
    ``reason(row, info) -> str | None``    why this row is dropped, or None to keep.
    ``verdicts(alive_rows) -> PCollection[(uid, Verdict)]`` for stages whose
        decision needs groups of rows (dedup, clustering, duplication). Rows the
        stage does not mention stay as they were.

offline smoke tests (``beam-filter make-test-models`` / ``--test-models DIR``)
    ``write_test_model(dir)`` (classmethod) writes tiny randomly initialised
        checkpoints with the real architecture of this stage's model(s) under ``dir``.
    ``test_model_params(dir)`` (classmethod) -> dict of parameter overrides that
        swap the stage's model for that tiny twin.

Conventions the pipeline relies on:
  * columns a stage adds are named after the stage id when they are model outputs
    (``{id}_score``), or after what they are when they are plain features (``lang``);
  * a column whose value is a 1-D numpy array is an *embedding*: the score phase
    stores it fp16 in ``embeddings/<shard>.npz`` (with ``uids``) instead of parquet,
    and select gives it back to rows as a float32 numpy array;
  * ``features``/``model_columns`` may set ``read_error`` (e.g. "corrupt_image") to
    drop a sample that turns out unusable; its decision reason is that error.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, ClassVar

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
    """Base class of every recipe stage. See the module docstring for the hooks."""

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

    # ---- score phase ----------------------------------------------------
    def features(self, sample) -> dict | None:
        return None

    def model_handler(self):
        return None

    def model_input(self, sample) -> Any:
        raise NotImplementedError

    def model_columns(self, inference) -> dict:
        raise NotImplementedError

    # ---- select phase ---------------------------------------------------
    def global_info(self, alive_rows):
        return None

    def reason(self, row: dict, info: Any = None) -> str | None:
        return None

    def verdicts(self, alive_rows):
        return None

    def score_config(self) -> dict | None:
        """What the score phase of this stage depends on; None when it computes nothing."""
        if type(self).features is Stage.features and not self.is_model_stage:
            return None
        names = self.score_params if self.score_params is not None else tuple(self.config)
        return {k: self.config.get(k) for k in names}

    # ---- offline smoke tests ---------------------------------------------
    @classmethod
    def write_test_model(cls, directory: str) -> None:
        return None

    @classmethod
    def test_model_params(cls, directory: str) -> dict:
        return {}

    # ---- introspection ----------------------------------------------------
    @property
    def is_model_stage(self) -> bool:
        return type(self).model_handler is not Stage.model_handler

    @property
    def is_grouping_stage(self) -> bool:
        return type(self).verdicts is not Stage.verdicts

    @property
    def uses_global_info(self) -> bool:
        return type(self).global_info is not Stage.global_info

    def provenance(self) -> dict:
        """What the report and meta.json say about this stage (models, checksums ...)."""
        return {"type": self.name, "params": self.config}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` available to recipes under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
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
