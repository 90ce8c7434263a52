"""Named inputs (sources.py): parsing --input NAME=GLOB:options and sources files, tagged shard
paths, and the names derived from them (per-shard outputs, made-up uids)."""

from __future__ import annotations

import pytest

from beam_filter import sources
from beam_filter.errors import UserError
from beam_filter.layout import shard_stem
from beam_filter.uids import stable_uid


def test_parse_named_inputs_with_options():
    s = sources.parse_input("cc12m=gs://b/cc12m/{00000..00010}.tar:fraction=0.5:copies=3")
    assert (s.name, s.glob, s.fraction, s.copies, s.is_external) == ("cc12m", "gs://b/cc12m/{00000..00010}.tar",
                                                                    0.5, 3, True)
    plain = sources.parse_input("/data/pool/*.tar")
    assert (plain.name, plain.glob, plain.fraction, plain.copies, plain.is_external) == (None, "/data/pool/*.tar",
                                                                                        1.0, 1, False)
    pool = sources.parse_input("pool=/d/*.tar:external=false")
    assert pool.name == "pool" and not pool.is_external and not pool.decontaminated("eval/")
    assert sources.parse_input("x=/d/*.tar:decontaminate=no").decontaminated("eval/") is False
    assert sources.parse_input("x=/d/*.tar").decontaminated("eval/") is True
    assert sources.parse_input("x=/d/*.tar").decontaminated(None) is False
    assert sources.parse_input("x=/d/*.tar:filter=false").filter is False
    assert sources.parse_inputs(["x=/d/*.tar:filter=false"]).stage_entry()["sources"]["sources"]["x"]["filter"] is False


@pytest.mark.parametrize("bad, msg", [
    ("/d/*.tar:copies=2", "need a source name"),
    ("x=/d/*.tar:fraction=0", r"\(0, 1\]"),
    ("x=/d/*.tar:fraction=1.5", r"\(0, 1\]"),
    ("x=/d/*.tar:copies=0", ">= 1"),
    ("x=/d/*.tar:copies=two", "integer"),
    ("x=/d/*.tar:external=maybe", "true or false"),
    ("x=/d/*.tar:copies=2:copies=3", "twice"),
])
def test_bad_inputs_are_one_line_errors(bad, msg):
    with pytest.raises(UserError, match=msg):
        sources.parse_input(bad)


def test_sources_file_and_duplicate_names(tmp_path):
    f = tmp_path / "mix.yaml"
    f.write_text("decontaminate: eval/\nsources:\n"
                 "  - {name: pool, input: 'p/*.tar', external: false}\n"
                 "  - {name: cc12m, input: 'gs://b/c/*.tar', fraction: 0.5}\n"
                 "  - {name: in1k, input: 'i/*.tar', copies: 3}\n")
    mix = sources.parse_inputs([str(f)])
    assert mix.eval_images == "eval/" and mix.globs == ["p/*.tar", "gs://b/c/*.tar", "i/*.tar"]
    entry = mix.stage_entry()["sources"]
    assert entry["sources"] == {"pool": {"fraction": 1.0, "copies": 1, "decontaminate": False},
                                "cc12m": {"fraction": 0.5, "copies": 1, "decontaminate": True},
                                "in1k": {"fraction": 1.0, "copies": 3, "decontaminate": True}}
    assert entry["decontaminate"] == "eval/"
    with pytest.raises(UserError, match="twice"):
        sources.parse_inputs(["a=x/*.tar", "a=y/*.tar"])
    (tmp_path / "bad.yaml").write_text("sources: [{input: 'x/*.tar'}]\n")
    with pytest.raises(UserError, match="name"):
        sources.parse_inputs([str(tmp_path / "bad.yaml")])


def test_tagged_shards_give_distinct_stems_and_uids():
    a, b = sources.tag("/d/a/00000.tar", "pool"), sources.tag("gs://b/c/00000.tar", "cc12m")
    assert sources.split_tag(b) == ("gs://b/c/00000.tar", "cc12m") and sources.untag(a) == "/d/a/00000.tar"
    assert sources.split_tag("/d/odd#name.tar") == ("/d/odd#name.tar", None)
    assert shard_stem(a) == "pool.00000" and shard_stem(b) == "cc12m.00000" and shard_stem("/d/00000.tar") == "00000"
    assert stable_uid(a, "k") != stable_uid(b, "k") != stable_uid("/d/00000.tar", "k")
    assert stable_uid("/elsewhere/00000.tar#pool", "k") == stable_uid(a, "k")     # moving a pool keeps uids


def test_match_refuses_stems_that_still_collide():
    mix = sources.parse_inputs(["/x/*.tar", "x=/y/*.tar"])
    listing = {"/x/*.tar": ["/x/x.00000.tar"], "/y/*.tar": ["/y/00000.tar"]}
    with pytest.raises(UserError, match="share the name"):
        mix.match(lambda globs: (listing[globs[0]], []))
