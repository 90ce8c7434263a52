"""The cluster presets (semdedup, near_dedup, devil_details) parse into the stages they describe."""

from __future__ import annotations

import os

import pytest
import yaml

from beam_filter.errors import UserError
from beam_filter.recipe import PRESETS_DIR, parse_recipe


def test_presets_parse():
    recipes = {}
    for name in ("semdedup", "near_dedup", "devil_details"):
        with open(os.path.join(PRESETS_DIR, f"{name}.yaml")) as f:
            recipes[name] = parse_recipe(yaml.safe_load(f), source=name)
    assert recipes["semdedup"].stages[-1].name == "semdedup"
    assert recipes["near_dedup"].stages[-1].p.quality == "clip_score"
    names = [s.name for s in recipes["devil_details"].stages]
    assert names[:4] == ["caption_frequency", "language", "junk_caption", "image_size"]
    assert names[-5:] == ["near_dedup", "semdedup", "cluster_importance", "quality_duplication", "add_back"]
    size = recipes["devil_details"].stages[3].p
    assert (size.min_width_height, size.max_width_height, size.width_height_ends) == (0.33, 3.33, "()")
    assert [c.name for c in recipes["devil_details"].stages[-1].children] == ["has_digits"]
    with pytest.raises(UserError, match="target"):
        recipes["devil_details"].stages[-3].verdicts(None)
