"""Source-aware inputs: several pools mixed into one output at set ratios (DataComp's BYOD track).

An ``--input`` may name its source and say how much of it to keep and how often::

    --input 'pool=/data/datacomp/*.tar:external=false'
    --input 'cc12m=gs://b/cc12m/*.tar:fraction=0.5'
    --input 'evaltrain=gs://b/in1k_train/*.tar:copies=3'

or all sources come from a YAML file given as ``--input sources.yaml`` (see
:func:`load_sources_file`). A plain glob is an unnamed input, as before.

* **Identity.** Two img2dataset sources both hold ``00000.tar``; a named source's
  shards are *tagged* ``<path>#<source>`` (:func:`tag`), and every name derived
  from a shard takes the tag with it: per-shard outputs are ``<source>.<stem>``
  (``layout.shard_stem``), and a sample without a json uid gets
  ``uids.stable_uid`` of ``<basename>#<source>/<key>``, so uids made up for
  samples are unique across sources. ``fsio.open_read`` reads the untagged path.
* **Mix.** The recipe gets a first stage, ``sources`` (stages/sources.py): a row
  of a source with ``fraction`` f is kept when ``uid_unit(uid, "source:<name>") < f``
  (deterministic by uid hash, independent of order and workers), and a kept row
  is written ``copies`` times (multiplied with any later copies). A source with
  ``filter=false`` (CC12M added whole to a filtered pool) has its rows that pass
  decided there: kept with reason ``unfiltered_source``, so no later stage sees
  them (nor counts them in a top fraction or a dedup group).
* **Decontamination.** External sources (every named source unless
  ``external=false``) go through the existing ``decontaminate`` stage's check
  against the evaluation images given by ``--decontaminate`` (or the file's
  ``decontaminate:``); ``decontaminate=false``/``true`` per source overrides it.
* **Accounting.** Decisions carry a ``source`` column; report.json and
  shards/meta.json list each source's samples, kept and written counts
  (:func:`source_summary`).

The recipe's own stages apply to every source whose ``filter`` is not false.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

from beam_filter.errors import UserError

TAG_SEP = "#"
STAGE_ID = "sources"
SOURCE_COLUMN = "source"
NOT_SAMPLED = "not_in_source_fraction"
UNFILTERED = "unfiltered_source"       # a kept row of a source with filter=false: the recipe skips it
_NAME = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_NAMED_INPUT = re.compile(rf"^({_NAME})=(.+)$")
_OPTION = re.compile(r":(fraction|copies|external|decontaminate|filter)=([^:/]*)$")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


@dataclasses.dataclass(frozen=True)
class Source:
    """One input: a shard glob, optionally named, with its keep fraction and copy count."""

    glob: str
    name: str | None = None
    fraction: float = 1.0
    copies: int = 1
    external: bool | None = None          # None: a named source is external
    decontaminate: bool | None = None     # None: external sources are decontaminated
    filter: bool = True                   # false: the recipe's stages skip this source's rows

    @property
    def is_external(self) -> bool:
        return bool(self.name) and (self.external is None or self.external)

    def decontaminated(self, eval_images: str | None) -> bool:
        if not eval_images:
            return False
        return self.is_external if self.decontaminate is None else bool(self.decontaminate)

    def describe(self, eval_images: str | None) -> dict:
        return {"input": self.glob, "fraction": self.fraction, "copies": self.copies, "filtered": self.filter,
                "external": self.is_external, "decontaminated": self.decontaminated(eval_images)}


@dataclasses.dataclass(frozen=True)
class Mix:
    """Every input of a command and the evaluation images external sources are checked against."""

    sources: tuple
    eval_images: str | None = None

    @property
    def named(self) -> bool:
        return any(s.name for s in self.sources)

    @property
    def globs(self) -> list[str]:
        return [s.glob for s in self.sources]

    def describe(self) -> dict:
        """What report.json / meta.json say about the mix (named sources only)."""
        return {s.name: s.describe(self.eval_images) for s in self.sources if s.name}

    def stage_entry(self) -> dict:
        """The recipe entry of the ``sources`` stage (stages/sources.py) for this mix."""
        cfg = {s.name: {"fraction": s.fraction, "copies": s.copies,
                        "decontaminate": s.decontaminated(self.eval_images), **({} if s.filter else {"filter": False})}
               for s in self.sources if s.name}
        params = {"sources": cfg}
        if self.eval_images and any(c["decontaminate"] for c in cfg.values()):
            params["decontaminate"] = self.eval_images
        return {STAGE_ID: params}

    def match(self, match_inputs: Callable[[list[str]], tuple[list[str], list[str]]]
              ) -> tuple[list[str], list[str]]:
        """(sorted shards, skipped files): each source's glob matched by ``match_inputs`` (the CLI's
        listing), a named source's shards tagged; shard names must stay unique across sources."""
        from beam_filter.layout import shard_stem

        shards, skipped = [], []
        for s in self.sources:
            found, other = match_inputs([s.glob])
            shards.extend(tag(p, s.name) if s.name else p for p in found)
            skipped.extend(other)
        shards = sorted(set(shards))
        seen: dict[str, str] = {}
        for p in shards:
            first = seen.setdefault(shard_stem(p), p)
            if first != p:
                raise UserError(f"two input shards share the name {shard_stem(p)!r} ({first}, {p}); "
                                "give their inputs different source names (--input NAME=GLOB)")
        return shards, sorted(set(skipped))


# ---- parsing -------------------------------------------------------------------------------

def parse_input(text: str) -> Source:
    """``[NAME=]GLOB[:fraction=F][:copies=K][:external=B][:decontaminate=B][:filter=B]`` -> Source."""
    m = _NAMED_INPUT.match(text)
    name, rest = (m.group(1), m.group(2)) if m and "/" not in m.group(1) else (None, text)
    opts: dict = {}
    while True:
        o = _OPTION.search(rest)
        if not o:
            break
        if o.group(1) in opts:
            raise UserError(f"--input {text}: {o.group(1)} given twice")
        opts[o.group(1)] = o.group(2)
        rest = rest[: o.start()]
    if opts and not name:
        raise UserError(f"--input {text}: options ({', '.join(sorted(opts))}) need a source name: "
                        f"--input NAME={text}")
    return _source(f"--input {text}", rest, name, opts)


def _source(where: str, glob: str, name, opts: dict) -> Source:
    if not glob:
        raise UserError(f"{where}: no shard glob")
    if name is not None and not re.fullmatch(_NAME, str(name)):
        raise UserError(f"{where}: source name {name!r} must be letters, digits and _ (starting with a letter)")
    unknown = set(opts) - {"fraction", "copies", "external", "decontaminate", "filter"}
    if unknown:
        raise UserError(f"{where}: unknown source option(s) {', '.join(sorted(unknown))}")
    try:
        fraction = float(opts.get("fraction", 1.0))
        copies = int(opts.get("copies", 1))
    except (TypeError, ValueError):
        raise UserError(f"{where}: fraction must be a number in (0, 1] and copies an integer >= 1") from None
    if not 0 < fraction <= 1:
        raise UserError(f"{where}: fraction={fraction} must be in (0, 1]")
    if copies < 1:
        raise UserError(f"{where}: copies={copies} must be >= 1")
    return Source(glob=glob, name=name, fraction=fraction, copies=copies,
                  external=_bool(where, "external", opts.get("external")),
                  decontaminate=_bool(where, "decontaminate", opts.get("decontaminate")),
                  filter=_bool(where, "filter", opts.get("filter")) is not False)


def _bool(where: str, key: str, value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE or v in _FALSE:
        return v in _TRUE
    raise UserError(f"{where}: {key}={value!r} must be true or false")


def load_sources_file(path: str) -> tuple[list[Source], str | None]:
    """A YAML sources file::

        decontaminate: eval_images/          # optional: evaluation images (dir, glob, .npy of pHashes)
        sources:
          - {name: pool, input: "pool/*.tar", external: false}
          - {name: cc12m, input: "gs://b/cc12m/*.tar", fraction: 0.5}
          - {name: in1k_train, input: "gs://b/in1k/*.tar", copies: 3}
    """
    import yaml

    from beam_filter import fsio

    if not fsio.exists(path):
        raise UserError(f"sources file not found: {path}")
    try:
        raw = yaml.safe_load(fsio.read_bytes(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
        raise UserError(f"{path}: a sources file is a mapping with a non-empty 'sources' list")
    unknown = set(raw) - {"sources", "decontaminate"}
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: decontaminate, sources")
    out = []
    for i, entry in enumerate(raw["sources"]):
        where = f"{path}: sources[{i}]"
        if not isinstance(entry, dict) or "input" not in entry or "name" not in entry:
            raise UserError(f"{where}: each source needs 'name' and 'input'")
        opts = {k: v for k, v in entry.items() if k not in ("name", "input")}
        out.append(_source(where, str(entry["input"]), str(entry["name"]), opts))
    return out, (str(raw["decontaminate"]) if raw.get("decontaminate") else None)


def parse_inputs(values: list[str], eval_images: str | None = None) -> Mix:
    """Every ``--input`` value (globs, named sources, ``*.yaml`` sources files) -> a Mix."""
    sources: list[Source] = []
    for v in values:
        if v.endswith((".yaml", ".yml")):
            found, images = load_sources_file(v)
            sources.extend(found)
            if images and eval_images and images != eval_images:
                raise UserError(f"{v}: decontaminate {images} differs from --decontaminate {eval_images}")
            eval_images = eval_images or images
        else:
            sources.append(parse_input(v))
    names = [s.name for s in sources if s.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--input: source name {dup[0]!r} given twice")
    if eval_images and not names:
        raise UserError("--decontaminate applies to named sources: give --input NAME=GLOB")
    return Mix(tuple(sources), eval_images)


# ---- tagged shard paths -----------------------------------------------------------------------

def tag(path: str, name: str) -> str:
    """``/d/00000.tar`` of source ``cc12m`` -> ``/d/00000.tar#cc12m``."""
    return f"{path}{TAG_SEP}{name}"


def split_tag(shard: str) -> tuple[str, str | None]:
    """(real path, source name or None). Only a ``.tar`` path followed by ``#<name>`` is tagged."""
    head, sep, name = str(shard).rpartition(TAG_SEP)
    if sep and head.endswith(".tar") and re.fullmatch(_NAME, name):
        return head, name
    return shard, None


def is_unfiltered(reason) -> bool:
    """Whether a decision reason marks a kept row of a source the recipe's stages skip."""
    return reason == UNFILTERED


def untag(shard: str) -> str:
    return split_tag(shard)[0]


def source_of(shard: str) -> str | None:
    return split_tag(shard)[1]


# ---- accounting -----------------------------------------------------------------------------

def source_summary(decision_files: list[str], mix: dict | None = None) -> dict:
    """{source: {samples, kept, kept_with_copies, dropped_by_fraction, ...config}} from decisions."""
    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    for path in decision_files:
        t = pq.read_table(path, columns=["shard", "kept", "copies", "reason"]).to_pydict()
        for shard, kept, copies, reason in zip(t["shard"], t["kept"], t["copies"], t["reason"]):
            name = source_of(shard) or "(unnamed)"
            c = out.setdefault(name, {"samples": 0, "kept": 0, "kept_with_copies": 0,
                                      NOT_SAMPLED: 0, "eval_contamination": 0})
            c["samples"] += 1
            if kept:
                c["kept"] += 1
                c["kept_with_copies"] += int(copies or 0)
            elif reason == NOT_SAMPLED:
                c[NOT_SAMPLED] += 1
            elif str(reason or "").startswith("eval_contamination"):
                c["eval_contamination"] += 1
    for name, cfg in (mix or {}).items():
        out.setdefault(name, {"samples": 0, "kept": 0, "kept_with_copies": 0,
                              NOT_SAMPLED: 0, "eval_contamination": 0}).update(cfg)
    return dict(sorted(out.items()))


# ---- select --scores of a mixed-source score run ------------------------------------------------

def recorded_mix(scores_dir: str, recipe_stages: list | None = None) -> tuple[dict | None, dict | None]:
    """(``sources`` stage entry, mix description) that a ``score`` run with named inputs recorded.

    ``select --scores`` puts the entry first in its recipe, so the same per-source fraction,
    copies, decontamination and ``filter`` rules decide the rows as ``run`` would: the entry is
    the scored recipe's own ``sources`` stage, params as scored (report.json ``recipe.stages``,
    also what ``columns.check_score_settings`` compares), and the description is report.json's
    ``sources`` (input, fraction, copies, flags; for the select's report and meta.json), else
    rebuilt from the stage's params. (None, None) when the scores were not made from named inputs,
    have no report.json, or the select recipe (``recipe_stages``, raw entries) has its own
    ``sources`` stage.
    """
    from beam_filter import fsio
    from beam_filter.layout import OutputLayout

    if any(isinstance(s, dict) and STAGE_ID in s for s in recipe_stages or ()):
        return None, None
    path = OutputLayout(scores_dir).report_json
    if not fsio.exists(path):
        return None, None
    try:
        report = fsio.read_json(path)
        stored = [s for s in report.get("recipe", {}).get("stages", [])
                  if isinstance(s, dict) and s.get("type") == STAGE_ID and s.get("id") == STAGE_ID]
    except (ValueError, AttributeError, TypeError):
        raise UserError(f"{path}: not a beam-filter report.json (the score run's record)") from None
    if not stored:
        return None, None
    params = dict(stored[0].get("params") or {})
    entry = {STAGE_ID: {**params, "type": STAGE_ID}}
    described = report.get("sources")
    if isinstance(described, dict) and described:       # the config only: select counts its own rows
        described = {name: {k: v for k, v in cfg.items() if k in _DESCRIBED}
                     for name, cfg in described.items() if isinstance(cfg, dict)}
    else:
        described = {name: {"fraction": cfg.get("fraction", 1.0), "copies": cfg.get("copies", 1),
                            "filtered": cfg.get("filter", True) is not False,
                            "decontaminated": bool(cfg.get("decontaminate"))}
                     for name, cfg in sorted((params.get("sources") or {}).items())}
    return entry, described


_DESCRIBED = ("input", "fraction", "copies", "filtered", "external", "decontaminated")   # Source.describe
