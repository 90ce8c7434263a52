"""HYPE's Lorentz geometry (rules/hyperbolic.py) against the formulas written out directly, one pair at
a time, and against the geometric facts the formulas encode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from beam_filter.rules import hyperbolic as H


def _lift(v, c):
    """exp map of one vector, straight from the formula."""
    n = math.sqrt(c) * float(np.linalg.norm(v))
    s = math.sinh(n) * np.asarray(v, float) / n
    return s, math.sqrt(1 / c + float(s @ s))


def _dist(x, y, c):
    (xs, xt), (ys, yt) = _lift(x, c), _lift(y, c)
    return math.acosh(-c * (float(xs @ ys) - xt * yt)) / math.sqrt(c)


def _ext_minus_aperture(x, y, c, k=0.1):
    (xs, xt), (ys, yt) = _lift(x, c), _lift(y, c)
    inner = float(xs @ ys) - xt * yt
    ext = math.acos((yt + xt * c * inner) / (float(np.linalg.norm(xs)) * math.sqrt((c * inner) ** 2 - 1)))
    return ext - math.asin(2 * k / (math.sqrt(c) * float(np.linalg.norm(xs))))


@pytest.mark.parametrize("c", [0.3, 1.0, 2.5])
def test_distances_and_angles_equal_the_formulas(c):
    rng = np.random.default_rng(int(c * 10))
    x = rng.normal(size=(5, 8)) * rng.uniform(0.2, 0.6, (5, 1))
    y = rng.normal(size=(7, 8)) * rng.uniform(0.2, 0.6, (7, 1))
    d = H.distance_matrix(x, y, c)
    ent = H.entailment(x, y, c)
    for i in range(5):
        for j in range(7):
            assert d[i, j] == pytest.approx(_dist(x[i], y[j], c), rel=1e-6, abs=1e-6)
            assert ent[i, j] == pytest.approx(_ext_minus_aperture(x[i], y[j], c), rel=1e-6, abs=1e-6)
    assert np.allclose(H.paired_distance(x[:5], y[:5], c), np.diag(d[:, :5]))
    assert np.allclose(H.image_specificity(y, x, c), ent.mean(axis=0))       # images y, reference texts x
    assert np.allclose(H.text_specificity(x, y, c), ent.mean(axis=1))        # texts x, reference images y


def test_geometry_facts():
    c = 0.8
    x = np.array([[0.3, -0.2, 0.5]])
    assert H.distance_matrix(x, x, c)[0, 0] == pytest.approx(0, abs=2e-4)   # acosh near 1 is steep
    xs, xt = H.expmap(x, c)
    assert float((xs @ xs.T)[0, 0] - xt[0] ** 2) == pytest.approx(-1 / c)      # on the hyperboloid
    # A point farther along the same ray lies inside x's cone (exterior angle 0): entailment < 0.
    assert H.exterior_angle(x, 3 * x, c)[0, 0] == pytest.approx(0, abs=1e-3)
    assert H.entailment(x, 3 * x, c)[0, 0] < 0 < H.entailment(x, -x, c)[0, 0]
    # Cones narrow away from the origin.
    assert H.half_aperture(3 * x, c)[0] < H.half_aperture(x, c)[0]
    # The authors' clamps: a tiny vector gives the widest aperture, not NaN.
    assert H.half_aperture(1e-6 * x, c)[0] == pytest.approx(math.pi / 2, abs=1e-3)
    assert np.isfinite(H.entailment(1e-9 * x, x, c)).all()
