"""Recipes: YAML lists of stages, validated into :class:`Recipe` objects.

A recipe is data (design rule 6, ARCHITECTURE.md): ``yaml.safe_load``, no eval, every key
checked, so a typo in a 12-hour job's recipe fails in the first second with a
one-line message instead of silently using a default.

Format::

    name: datacomp_basic
    description: one line
    stages:
      - datacomp_basic: {}            # stage id == registered type
      - clip_l14:                     # any id; `type` names the registered Stage
          type: clip
          fraction: 0.3
      - any_of:                       # union: keep when ANY sub-stage keeps
          stages: [ {uid_subset: {path: dfn.npy}}, {mlm: {threshold: 85}} ]

``--set STAGE_ID.PARAM=VALUE`` overrides one parameter (``--set any_of.mlm.threshold=80``
reaches into a combinator). Where no stage has that id, a stage *type* names the one
stage of that type in the recipe, nested or not, so ``--set clip.model=ViT-S-32-alt``
works on any recipe with a single CLIP stage whatever its id (two of a type: name one
by its id).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from beam_filter.errors import UserError
from beam_filter.registry import GroupStage, Stage, build_stage, register

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")
_TOP_KEYS = {"name", "description", "stages", "add_back"}
COMBINATORS = ("any_of", "all_of")


@dataclass
class Recipe:
    name: str
    description: str
    stages: list[Stage]
    text: str                       # canonical YAML of the resolved recipe (overrides applied)
    source: str                     # preset name or file path
    raw: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """sha256 of the canonical recipe: names outputs' provenance and resume checks."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def score_hash(self) -> str:
        """Hash of only what the score phase computes (features and models).

        Changing a threshold must not invalidate scores already computed, so a
        rerun with a new threshold skips re-scoring (score once, filter many times).
        """
        parts = [{"id": s.id, "type": s.name, "score": s.score_config()} for s in self.leaf_stages()
                 if s.score_config() is not None]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def leaf_stages(self) -> list[Stage]:
        out = []

        def walk(s):        # combinators nest one level (an any_of inside add_back: two)
            if isinstance(s, Combinator):
                for c in s.children:
                    walk(c)
            else:
                out.append(s)
        for s in self.stages:
            walk(s)
        return out

    def model_stages(self) -> list[Stage]:
        return [s for s in self.leaf_stages() if s.is_model_stage]

    def summary(self) -> list[dict]:
        return [{"id": s.id, "type": s.name, "params": _jsonable(s.config)} for s in self.stages]


class Combinator(Stage):
    """``any_of`` (union) / ``all_of`` (intersection) of sub-stages.

    Sub-stages see the same alive rows as the combinator. Grouping stages (dedup,
    clustering) are not allowed inside: their verdicts depend on which rows
    survive, which a union cannot define.
    """

    kind = "combinator"
    params: dict = {}
    union = True

    def __init__(self, stage_id: str, children: list[Stage]):
        super().__init__(stage_id, {})
        self.children = children
        self.config = {"stages": [{c.id: {"type": c.name, **_jsonable(c.canonical_config())}} for c in children]}

    def combine(self, reasons: list[str | None]) -> str | None:
        if self.union:
            if any(r is None for r in reasons):
                return None
            return "none_of:" + "|".join(reasons)
        return next((r for r in reasons if r is not None), None)

    def reason_array(self, part, alive, info: Any = None):
        """Vectorised ``combine`` (columnar.py): the children's reason arrays combined row by row,
        each child with its own info, as ``selection.stage_reason`` does; None when a child has no hook."""
        import numpy as np

        infos = info or {}
        arrays = []
        for child in self.children:
            reasons = child.reason_array(part, alive, infos.get(child.id))
            if reasons is None:
                return None
            arrays.append(reasons)
        out = np.full(len(alive), None, dtype=object)
        idx = np.flatnonzero(alive)
        combined = [self.combine([a[i] for a in arrays]) for i in idx]
        out[idx] = np.array(combined + [None], dtype=object)[:-1]   # strings as elements, not sequences
        return out


@register
class AnyOf(Combinator):
    name = "any_of"
    description = "Keep a row when any sub-stage keeps it (union of filters)."
    union = True


@register
class AllOf(Combinator):
    name = "all_of"
    description = "Keep a row only when every sub-stage keeps it (intersection)."
    union = False


class AddBackSection(Combinator):
    """The recipe's ``add_back:`` section (addback.py): after every main stage, a dropped row
    that one of these stages keeps is kept again, with reason ``added_back:<stage id>``.

    Not registered: only the ``add_back`` recipe key makes one, always last."""

    name = "add_back"
    description = "Rows dropped by the main stages that one of these stages keeps are added back."
    union = True


def list_presets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def load_recipe(spec: str, overrides: list[str] | tuple = ()) -> Recipe:
    """Load a preset name or a YAML file path and apply ``--set`` overrides."""
    return parse_recipe(load_raw_recipe(spec), source=spec, overrides=overrides)


def load_raw_recipe(spec: str) -> Any:
    """A preset's or YAML file's content as written, before any stage is built: what a caller
    edits before :func:`parse_recipe` (a stage put first), for a recipe whose stages need ``--set``
    values to build (hype's centroids)."""
    if os.path.isfile(spec):
        path = spec
    elif os.path.isfile(os.path.join(PRESETS_DIR, f"{spec}.yaml")):
        path = os.path.join(PRESETS_DIR, f"{spec}.yaml")
    else:
        raise UserError(f"recipe {spec!r} is neither a file nor a preset; presets: {', '.join(list_presets())}")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return raw


def parse_recipe(raw: Any, source: str = "<recipe>", overrides=()) -> Recipe:
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a recipe is a mapping with 'name' and 'stages'")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise UserError(f"{source}: unknown recipe key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    entries = raw.get("stages")
    if not isinstance(entries, list):   # [] = keep everything, just reshard (DataComp's no_filter)
        raise UserError(f"{source}: 'stages' must be a list (an empty list keeps every sample)")
    specs = [_stage_spec(source, e) for e in entries]
    extra = raw.get("add_back")
    if extra is not None:       # one section stage, last (addback.py)
        from beam_filter.addback import SECTION

        if not isinstance(extra, list) or not extra:
            raise UserError(f"{source}: 'add_back' must be a non-empty list of stages")
        specs.append({"id": SECTION, "type": SECTION, "params": {},
                      "children": [_stage_spec(source, e) for e in extra]})
    for ov in overrides:
        _apply_override(specs, ov)
    _check_unique_ids(source, specs)
    stages = [_build(source, s) for s in specs]
    name = str(raw.get("name") or os.path.splitext(os.path.basename(source))[0])
    main = [s for s in stages if not isinstance(s, AddBackSection)]
    resolved = {"name": name, "description": raw.get("description", ""),
                "stages": [{s.id: {"type": s.name, **_jsonable(s.canonical_config())}} for s in main]}
    if len(main) < len(stages):
        resolved["add_back"] = stages[-1].config["stages"]
    text = yaml.safe_dump(resolved, sort_keys=True, default_flow_style=False)
    return Recipe(name=name, description=str(raw.get("description", "")), stages=stages,
                  text=text, source=source, raw=raw)


# ---- internals ------------------------------------------------------------

def _stage_spec(source: str, entry: Any) -> dict:
    """Normalise one ``{id: {params}}`` list entry to ``{"id", "type", "params"}``."""
    if isinstance(entry, str):
        entry = {entry: {}}
    if not isinstance(entry, dict) or len(entry) != 1:
        raise UserError(f"{source}: each stage is a one-key mapping like '- datacomp_basic: {{}}', got {entry!r}")
    (sid, params), = entry.items()
    params = dict(params or {})
    if not isinstance(params, dict):
        raise UserError(f"{source}: stage {sid!r}: parameters must be a mapping")
    type_name = params.pop("type", sid)
    spec = {"id": str(sid), "type": str(type_name), "params": params}
    if type_name in COMBINATORS:
        children = params.pop("stages", None)
        if params:
            raise UserError(f"{source}: stage {sid!r} ({type_name}) takes only 'stages', got {sorted(params)}")
        if not isinstance(children, list) or not children:
            raise UserError(f"{source}: stage {sid!r} ({type_name}) needs a non-empty 'stages' list")
        spec["children"] = [_stage_spec(source, c) for c in children]
    return spec


def _apply_override(specs: list[dict], override: str) -> None:
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise UserError(f"--set {override!r}: expected STAGE.PARAM=VALUE")
    path, value = override.split("=", 1)
    *ids, param = path.split(".")
    level, spec = specs, None
    for sid in ids:
        spec = _find_stage(override, level, sid)
        level = spec.get("children", [])
    if "children" in spec:
        raise UserError(f"--set {override!r}: {spec['id']!r} is a combinator; name a sub-stage")
    try:
        spec["params"][param] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"--set {override!r}: the value is not valid YAML "
                        f"({str(e).strip().splitlines()[0]}); quote it to pass a string") from None


def _find_stage(override: str, level: list[dict], name: str) -> dict:
    """The stage ``name`` names in ``level``: by id, else the only stage of that type at
    or below this level."""
    spec = next((s for s in level if s["id"] == name), None)
    if spec is not None:
        return spec

    def walk(specs):
        for s in specs:
            yield s
            yield from walk(s.get("children", []))

    of_type = [s for s in walk(level) if s["type"] == name]
    if len(of_type) == 1:
        return of_type[0]
    if of_type:
        ids = ", ".join(s["id"] for s in of_type)
        raise UserError(f"--set {override!r}: {len(of_type)} stages of type {name!r} ({ids}); "
                        "name one by its id")
    known = ", ".join(s["id"] for s in level)
    raise UserError(f"--set {override!r}: no stage {name!r} in the recipe (stages: {known})")


def _check_unique_ids(source: str, specs: list[dict], seen: set | None = None) -> None:
    seen = set() if seen is None else seen
    for s in specs:
        if s["id"] in seen:
            raise UserError(f"{source}: stage id {s['id']!r} is used twice; give one of them another id "
                            f"and `type: {s['type']}`")
        seen.add(s["id"])
        _check_unique_ids(source, s.get("children", []), seen)


def _build(source: str, spec: dict) -> Stage:
    if "children" in spec and spec["type"] == AddBackSection.name and spec["id"] == AddBackSection.name:
        from beam_filter.addback import check_entry

        children = [_build(source, c) for c in spec["children"]]
        for c in children:
            check_entry(source, c)
        return AddBackSection(spec["id"], children)
    if "children" in spec:
        from beam_filter.registry import stage_class

        cls = stage_class(spec["type"])
        children = [_build(source, c) for c in spec["children"]]
        for c in children:
            if isinstance(c, (GroupStage, Combinator)):
                raise UserError(f"{source}: {c.id!r} ({c.name}) cannot be inside {spec['type']}: "
                                "only per-row filters can be combined")
        return cls(spec["id"], children)
    return build_stage(spec["id"], spec["type"], spec["params"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
