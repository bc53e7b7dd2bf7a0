"""Shape primitives of the virtual abdomen, in mm: signed distances and 3-D tubes.

Signed distances are negative inside; arrays broadcast and scalars work too. ``cap``,
``smoothstep`` and ``wrap`` are the profiles and angle helpers the organs are shaped with.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def fourier(c, s, coeffs: np.ndarray):
    """1 + sum_k a_k cos(k th) + b_k sin(k th) (k = 1..K, coeffs [K, 2]) and its th-derivative.

    Takes c = cos(th), s = sin(th); the harmonics follow from the angle-addition recurrence.
    """
    f = 1.0 + 0.0 * c
    df = 0.0 * c
    ck, sk = c, s
    for k, (a, b) in enumerate(coeffs, start=1):
        f = f + a * ck + b * sk
        df = df + k * (b * ck - a * sk)
        ck, sk = ck * c - sk * s, sk * c + ck * s
    return f, df


def blob_sdf(x, y, cx, cy, rx, ry, angle=0.0, coeffs=None):
    """Ellipse (semi-axes rx, ry, rotated by angle) with a smooth radial Fourier perturbation.

    Distance is (r - R(th)) / sqrt(1 + (R'/R)^2): exact normal distance to first order near the
    boundary, which is all the one-pixel edge ramp needs.
    """
    dx, dy = x - cx, y - cy
    ca, sa = math.cos(angle), math.sin(angle)
    u = dx * ca + dy * sa
    v = dy * ca - dx * sa
    r = np.hypot(u, v)
    c, s = u / np.maximum(r, 1e-9), v / np.maximum(r, 1e-9)
    rx, ry = np.maximum(rx, 1e-3), np.maximum(ry, 1e-3)
    q = (ry * c) ** 2 + (rx * s) ** 2
    radius = rx * ry / np.sqrt(q)
    g = -(rx * rx - ry * ry) * s * c / q
    if coeffs is not None:
        f, df = fourier(c, s, coeffs)
        radius = radius * f
        g = g + df / f
    return (r - radius) / np.sqrt(1.0 + g * g)


def circle_sdf(x, y, cx, cy, radius):
    return np.hypot(x - cx, y - cy) - radius


def segment_distance(x, y, z, a, b):
    """Distance (mm) from points (x, y, z) to the 3-D segment a-b and the nearest point's y."""
    d = b - a
    length2 = float(d @ d) + 1e-12
    s = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / length2
    s = np.clip(s, 0.0, 1.0)
    px, py, pz = a[0] + s * d[0], a[1] + s * d[1], a[2] + s * d[2]
    return np.sqrt((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2), py


def cap(t, t0: float, t1: float):
    """Ellipsoid-cap profile: 1 at the middle of [t0, t1], sqrt-falling to 0 at its ends."""
    u = (2.0 * t - t0 - t1) / (t1 - t0)
    return np.sqrt(np.maximum(0.0, 1.0 - u * u))


def smoothstep(v):
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def wrap(angle):
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def capsules_sdf(x, y, segments) -> np.ndarray:
    """Union of 2-D capsules: segments is a list of ((x0, y0), (x1, y1), half_thickness_mm)."""
    out = None
    for p0, p1, half in segments:
        d, _ = segment_distance(x, y, 0.0, np.array([p0[0], p0[1], 0.0]),
                                np.array([p1[0], p1[1], 0.0]))
        out = d - half if out is None else np.minimum(out, d - half)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Tube:
    """A 3-D polyline tube: segments a[i] -> b[i] (mm, [N, 3]) with radii [N] (mm)."""

    a: np.ndarray
    b: np.ndarray
    radius: np.ndarray
