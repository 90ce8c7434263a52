"""A recipe's hash (recorded in every decisions file, used by resume) must not move when the project
adds a parameter to a stage type: later-added parameters at their default stay out of the canonical
text (Param.hash_at_default=False)."""

from __future__ import annotations

from beam_filter.recipe import load_recipe

# The hashes these presets had before parameters were added to clip, image_size and uid_subset
# (commit a87d03a); outputs made then stay byte-identical.
PINNED = {
    "datacomp_basic": "f34537d3bc7f",
    "datacomp_b32_th025": "dd5178c1d94a",
    "datacomp_clip_l14_30pct": "0ddb4494034f",
    "devil_flipped_clip": "ff9f0800157b",
    "quickstart": "6018842bb7ec",
    "semdedup": "52403fdb0c2f",
}


def test_presets_keep_their_hash_when_parameters_are_added():
    for name, prefix in PINNED.items():
        assert load_recipe(name).hash.startswith(prefix), name


def test_a_later_parameter_counts_once_it_is_set():
    base = load_recipe("datacomp_clip_l14_30pct")
    masked = load_recipe("datacomp_clip_l14_30pct", ["clip_l14.masked=true"])
    assert "masked" not in base.text and "masked: true" in masked.text
    assert masked.hash != base.hash
    # Set to its default explicitly: the same recipe, the same hash.
    assert load_recipe("datacomp_clip_l14_30pct", ["clip_l14.masked=false"]).hash == base.hash
