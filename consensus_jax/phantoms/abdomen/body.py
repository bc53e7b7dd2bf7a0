"""The body outline and its wall: skin, subcutaneous fat and muscle around the abdominal cavity.

Angles are measured about the body centre from +x towards +y (posterior); the outline and the
layer thicknesses change smoothly with t = z / ABDOMEN_LENGTH_MM.
"""

from __future__ import annotations

import numpy as np

from consensus_jax.phantoms.abdomen.shapes import fourier, wrap

ABDOMEN_LENGTH_MM = 150.0
MAX_BODY_RADIUS_MM = 175.0


def make_body(rng: np.random.Generator) -> dict:
    a = rng.uniform(145.0, 170.0)
    body = {
        "cx": rng.uniform(-8.0, 8.0), "cy": rng.uniform(-4.0, 10.0),
        "a": a, "b_ant": rng.uniform(0.62, 0.78) * a, "b_post": rng.uniform(0.55, 0.64) * a,
        "n_ant": rng.uniform(2.1, 2.6), "n_post": rng.uniform(2.8, 3.6),
        "shape": rng.uniform(-1.0, 1.0, (6, 2)) * np.array([[0.015], [0.018], [0.012], [0.009],
                                                              [0.006], [0.0045]]),
        "dz": rng.uniform(-0.05, 0.05, 2), "skin": rng.uniform(1.2, 2.0),
        "fat": rng.uniform(8.0, 32.0), "fat_shape": rng.normal(0.0, 0.08, (5, 2)),
        "muscle": rng.uniform(8.0, 13.0), "muscle_shape": rng.normal(0.0, 0.06, (5, 2)),
        "paraspinal": rng.uniform(42.0, 55.0), "paraspinal_width": rng.uniform(0.38, 0.48),
        "quadratus": rng.uniform(10.0, 20.0),
    }
    # Shrink the rare largest bodies so that every slice fits in the reconstruction circle.
    th = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    reach = max(float(np.max(np.hypot(body["cx"] + r * np.cos(th), body["cy"] + r * np.sin(th))))
                for r in (body_radii(body, th, t)[0] for t in np.linspace(-0.2, 1.6, 7)))
    if reach > MAX_BODY_RADIUS_MM:
        for key in ("a", "b_ant", "b_post"):
            body[key] *= MAX_BODY_RADIUS_MM / reach
    return body


def body_dims(body: dict, t):
    t = np.clip(t, -0.2, 1.6)
    grow = 1.0 + body["dz"][0] * (t - 0.5) + body["dz"][1] * np.sin(np.pi * t)
    return body["a"] * grow, body["b_ant"] * grow, body["b_post"] * grow


def body_radii(body: dict, th, t: float):
    """Radii (mm) of the skin surface and of the inner edges of skin, fat and muscle at angle th.

    th is measured from +x towards +y (posterior) about the body centre. Also returns R'/R of the
    outline, used to turn radial differences into normal distances.
    """
    a, b_ant, b_post = body_dims(body, t)
    c, s = np.cos(th), np.sin(th)
    posterior = s > 0
    b = np.where(posterior, b_post, b_ant)
    n = np.where(posterior, body["n_post"], body["n_ant"])
    ca, sb = np.abs(c) / a, np.abs(s) / b
    ssum = ca ** n + sb ** n
    radius = ssum ** (-1.0 / n)
    g = (ca ** (n - 1.0) * np.sign(c) * s / a - sb ** (n - 1.0) * np.sign(s) * c / b) / ssum
    f, df = fourier(c, s, body["shape"])
    radius = radius * f
    g = g + df / f
    fat_f, _ = fourier(c, s, body["fat_shape"])
    fat = body["fat"] * np.maximum(0.2, (1.0 - 0.3 * s + 0.15 * c * c) * fat_f)
    mus_f, _ = fourier(c, s, body["muscle_shape"])
    from_back = np.abs(wrap(th - np.pi / 2))
    back = np.exp(-(from_back / body["paraspinal_width"]) ** 2)
    quadratus = np.exp(-((from_back - 0.7) / 0.25) ** 2)
    # The linea alba: a thin fascial gap between the two rectus muscles.
    alba = np.exp(-(wrap(th + np.pi / 2) / 0.035) ** 2)
    muscle = (body["muscle"] * mus_f * (0.65 + 0.6 * c * c) * (1.0 - 0.85 * alba)
              + body["paraspinal"] * back + body["quadratus"] * quadratus)
    r_skin = radius - body["skin"]
    r_fat = r_skin - fat
    r_cav = r_fat - muscle
    return radius, r_skin, r_fat, r_cav, g


def cavity_sdf(body: dict, x, y, t: float):
    dx, dy = x - body["cx"], y - body["cy"]
    _, _, _, r_cav, g = body_radii(body, np.arctan2(dy, dx), t)
    return (np.hypot(dx, dy) - r_cav) / np.sqrt(1.0 + g * g)


def inner_dims(body: dict) -> tuple[float, float, float]:
    """Nominal cavity half-width and anterior/posterior depths (mm), for placing organs."""
    a, b_ant, b_post = body_dims(body, 0.5)
    inner_a = a - body["skin"] - 1.15 * body["fat"] - body["muscle"]
    inner_b = b_ant - body["skin"] - 1.3 * body["fat"] - body["muscle"]
    inner_p = b_post - body["skin"] - 0.7 * body["fat"] - body["muscle"]
    return inner_a, inner_b, inner_p
