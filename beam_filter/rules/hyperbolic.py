"""Lorentz-model geometry of HYPE (Kim et al., ECCV 2024; naver-ai/hype ``hyperbolic.py``, after MERU).

Pure numpy (float64), row vectors. A hyperbolic CLIP's encoder output ``v`` (already
scaled by its learned ``exp(alpha)``) is a tangent vector at the origin; the
exponential map puts it on the hyperboloid of curvature ``-c``:

    x_space = sinh(sqrt(c) |v|) v / (sqrt(c) |v|),   x_time = sqrt(1/c + |x_space|^2)
    <x, y>_L = x_space . y_space - x_time y_time
    d_L(x, y) = acosh(-c <x, y>_L) / sqrt(c)                    (similarity: -d_L)
    aperture(x) = asin(2K / (sqrt(c) |x_space|)),  K = 0.1       (entailment-cone half-aperture)
    ext(x, y) = acos((y_time + x_time c <x, y>_L) / (|x_space| sqrt((c <x, y>_L)^2 - 1)))
    entailment(x, y) = ext(x, y) - aperture(x)                  (> 0: y outside x's cone)

Specificities (the authors' ``specificity``): an image's is the mean of
``entailment(t, image)`` over the reference *texts* t; a text's the mean of
``entailment(text, i)`` over the reference *images* i. The clamps are the
authors' (``sinh`` argument in [1e-8, asinh(2^15)], ``acosh`` argument >= 1e-8,
``asin``/``acos`` arguments inside (-1, 1) by 1e-8, 1e-8 added to denominators),
so values match theirs wherever theirs are finite.
"""

from __future__ import annotations

import math

import numpy as np

K_APERTURE = 0.1
_EPS = 1e-8
_MAX_SINH_ARG = math.asinh(2 ** 15)


def expmap(v, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Exponential map at the origin: ``(x_space (n, d), x_time (n,))``."""
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    sc = math.sqrt(float(c))
    r = sc * np.linalg.norm(v, axis=-1, keepdims=True)
    space = np.sinh(np.clip(r, _EPS, _MAX_SINH_ARG)) * v / np.maximum(r, _EPS)
    time = np.sqrt(1.0 / float(c) + np.sum(space ** 2, axis=-1))
    return space, time


def lorentz_inner(xs, xt, ys, yt) -> np.ndarray:
    """Pairwise ``<x_i, y_j>_L`` as an (n, m) matrix."""
    return np.asarray(xs) @ np.asarray(ys).T - np.outer(xt, yt)


def distance_matrix(x, y, c: float) -> np.ndarray:
    """Pairwise Lorentz distance d_L between tangent vectors ``x`` (n, d) and ``y`` (m, d)."""
    xs, xt = expmap(x, c)
    ys, yt = expmap(y, c)
    inner = lorentz_inner(xs, xt, ys, yt)
    return np.arccosh(np.maximum(-float(c) * inner, _EPS)) / math.sqrt(float(c))


def paired_distance(x, y, c: float) -> np.ndarray:
    """d_L(x_i, y_i) for each row i (an image and its own caption)."""
    xs, xt = expmap(x, c)
    ys, yt = expmap(y, c)
    inner = np.sum(xs * ys, axis=-1) - xt * yt
    return np.arccosh(np.maximum(-float(c) * inner, _EPS)) / math.sqrt(float(c))


def half_aperture(x, c: float, k: float = K_APERTURE) -> np.ndarray:
    """Half-aperture of each tangent vector's entailment cone (n,)."""
    xs, _ = expmap(x, c)
    denom = math.sqrt(float(c)) * np.linalg.norm(xs, axis=-1) + _EPS
    return np.arcsin(np.clip(2 * k / denom, -1 + _EPS, 1 - _EPS))


def exterior_angle(x, y, c: float) -> np.ndarray:
    """Pairwise exterior angle ext(x_i, y_j) at x_i between the origin and y_j: (n, m)."""
    xs, xt = expmap(x, c)
    ys, yt = expmap(y, c)
    cin = float(c) * lorentz_inner(xs, xt, ys, yt)
    norm = np.linalg.norm(xs, axis=-1)[:, None]
    denom = norm * np.sqrt(np.maximum(cin ** 2 - 1, _EPS)) + _EPS
    num = yt[None, :] + xt[:, None] * cin
    return np.arccos(np.clip(num / denom, -1 + _EPS, 1 - _EPS))


def entailment(x, y, c: float, k: float = K_APERTURE) -> np.ndarray:
    """ext(x_i, y_j) - aperture(x_i): how far y_j lies outside x_i's cone, (n, m)."""
    return exterior_angle(x, y, c) - half_aperture(x, c, k)[:, None]


def image_specificity(images, reference_texts, c: float) -> np.ndarray:
    """Mean over reference texts t of entailment(t, image): one value per image."""
    return entailment(reference_texts, images, c).mean(axis=0)


def text_specificity(texts, reference_images, c: float) -> np.ndarray:
    """Mean over reference images i of entailment(text, i): one value per text."""
    return entailment(texts, reference_images, c).mean(axis=1)
