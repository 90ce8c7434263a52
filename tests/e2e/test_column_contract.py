"""The column contract through the CLI: a recipe whose columns the input cannot provide stops with one line.

Regression tests of issue 13: a misspelt embedding column, and `select --recipe near_dedup` on
scores made by `score --recipe datacomp_basic` (it used to keep 114 samples with 0 duplicates,
silently). The pure checks (columns.check_recipe) are in tests/unit/test_columns.py.
"""

from __future__ import annotations

import os
import subprocess
import sys


def _cli(*args, cwd):
    env = {**os.environ, "BEAM_FILTER_OFFLINE": "1"}
    quiet = ["--no-progress"] if args[0] in ("run", "score", "select", "reshard") else []
    p = subprocess.run([sys.executable, "-m", "beam_filter.cli", *args, *quiet], cwd=cwd,
                       capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, [line for line in p.stderr.splitlines() if line.strip()]


def test_cli_refuses_the_typo_before_any_work(clean_pool, tmp_path):
    (tmp_path / "typo.yaml").write_text(
        "name: typo\nstages:\n  - datacomp_basic: {}\n  - semdedup: {embedding: clip_image_embeding}\n")
    code, err = _cli("run", "--recipe", "typo.yaml", "--input", f"{clean_pool[0]}/*.tar", "--output", "out",
                     cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'semdedup'" in err[0] and "'clip_image_embeding'" in err[0]
    assert not (tmp_path / "out" / "decisions").exists()


def test_select_on_scores_without_the_needed_feature_stops(clean_pool, tmp_path):
    """Issue 13: scores from datacomp_basic, then near_dedup on them kept 114 with 0 duplicates."""
    code, err = _cli("score", "--recipe", "datacomp_basic", "--input", f"{clean_pool[0]}/*.tar",
                     "--output", "s", cwd=tmp_path)
    assert code == 0, err
    code, err = _cli("select", "--recipe", "near_dedup", "--scores", "s", "--output", "o", cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'near_dedup'" in err[0] and "'phash'" in err[0]
    # The same scores do serve a recipe whose columns they hold.
    code, err = _cli("select", "--recipe", "datacomp_basic", "--scores", "s", "--output", "o2", cwd=tmp_path)
    assert code == 0, err


def test_select_refuses_scores_made_with_other_model_settings(clean_pool, tmp_path):
    """Columns are named after stage ids: `clip_b32_score` from one model must not pass for another's."""
    code, err = _cli("make-test-models", "models", cwd=tmp_path)
    assert code == 0, err
    code, err = _cli("score", "--recipe", "datacomp_b32_th025", "--input", f"{clean_pool[0]}/*.tar",
                     "--output", "s", "--test-models", "models", cwd=tmp_path)
    assert code == 0, err
    # A new threshold is what select is for: it works on the stored scores.
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o1",
                     "--test-models", "models", "--set", "clip_b32.threshold=0.1", cwd=tmp_path)
    assert code == 0, err
    # Other score settings (another model, other weights, no mirrored pass) are not.
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o2",
                     "--set", "clip_b32.flip=true", "--test-models", "models", cwd=tmp_path)
    assert code == 2 and len(err) == 1, err
    assert "'clip_b32'" in err[0] and "flip=False (this recipe: True)" in err[0]
    code, err = _cli("select", "--recipe", "datacomp_b32_th025", "--scores", "s", "--output", "o3",
                     "--set", "clip_b32.pretrained=other.pt", cwd=tmp_path)
    assert code == 2 and len(err) == 1 and "other.pt" in err[0], err
