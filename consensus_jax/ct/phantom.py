"""Procedural abdomen-like virtual patients: the built-in stand-in for the LDCT Grand Challenge.

The LDCT Grand Challenge data are contrast-enhanced (portal-venous) abdomen CT, 10 patients, read in
the liver window [-160, 240] HU. This module draws comparable slices from a seed: a patient is a
seed that fixes body size and shape, fat and muscle thickness, organ layout, vessel trees, bowel
loops and liver lesions; a slice is that patient cut at ``z = slice_index * slice_spacing_mm``.

Conventions
- Images are [H, W] float32 in HU, rows top to bottom = anterior to posterior (patient supine),
  columns left to right = patient's right to patient's left (radiological convention: the liver is
  on the LEFT of the image, the spleen and stomach on the right).
- Geometry is defined in mm, centred on the image centre: pixel (row, col) has centre
  ``x = (col - (W - 1) / 2) * pixel_size_mm``, ``y = (row - (H - 1) / 2) * pixel_size_mm``. The same
  patient at 128 px x 2.97 mm and at 512 px x 0.742 mm shows the same anatomy at the same place.
- z runs from head to feet over about ``ABDOMEN_LENGTH_MM`` (liver dome to below the kidneys);
  organs change size and position smoothly with z, so neighbouring slices are correlated.
- Each pixel value is the pixel-area average of a continuous object: edges are soft over one pixel
  (plus a sub-millimetre physical blur) and the tissue texture (band-limited Gaussian random fields,
  correlation lengths 1.2-5 mm) is integrated over the pixel exactly, so a coarse slice approximates
  the block average of a fine one and nothing is aliased.

``abdomen_slice(..., return_meta=True)`` also gives a label map (dominant tissue per pixel, names in
``LABEL_NAMES``), a point deep inside each tissue, and the lesions the slice cuts (centres and radii
in pixels) for figures and region statistics; ``liver_lesions`` lists a patient's lesions in mm.
Building a patient takes ~20-40 ms and rendering a slice ~10-20 ms at 64 px and ~0.2 s at 512 px
on one CPU core, so ``virtual_patient`` (built once) is the fast way to many slices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FOV_MM = 380.0
SLICE_SPACING_MM = 3.0
ABDOMEN_LENGTH_MM = 150.0
LIVER_WINDOW_HU = (-160.0, 240.0)
AIR_HU = -1000.0
MIN_FOV_MM = 360.0
MAX_BODY_RADIUS_MM = 175.0

LABEL_NAMES: tuple[str, ...] = (
    "air", "skin", "subcutaneous_fat", "muscle", "visceral_fat", "liver", "liver_vessel",
    "liver_lesion", "gallbladder", "spleen", "stomach_wall", "stomach_content", "pancreas",
    "kidney_cortex", "kidney_medulla", "renal_sinus", "aorta", "ivc", "vessel", "calcification",
    "vertebral_body", "vertebral_cortex", "intervertebral_disc", "spinal_canal", "posterior_arch",
    "rib_cortex", "rib_marrow", "costal_cartilage", "bowel_wall", "bowel_content", "colon_content",
    "gas", "lung",
)
_ID = {name: i for i, name in enumerate(LABEL_NAMES)}

# Point standard deviation (HU) of the fine (1.2 mm), mid (2.5 mm) and coarse (5 mm) texture fields
# per tissue; pixel integration lowers the sampled std at coarse pixels, as in a real scanner.
_TEXTURE = {
    "skin": (3.0, 3.0, 2.0), "fat": (3.0, 3.0, 3.0), "muscle": (5.0, 5.0, 4.0),
    "liver": (4.0, 6.0, 6.0), "spleen": (3.0, 5.0, 5.0), "kidney": (5.0, 6.0, 4.0),
    "blood": (2.0, 2.0, 3.0), "bone": (30.0, 20.0, 10.0), "arch": (25.0, 15.0, 10.0),
    "disc": (4.0, 4.0, 4.0), "csf": (2.0, 2.0, 2.0), "gut": (5.0, 8.0, 12.0),
    "pancreas": (6.0, 10.0, 8.0), "lung": (20.0, 20.0, 15.0), "fluid": (2.0, 2.0, 2.0),
}
_CORR_MM = (1.2, 2.5, 5.0)
_NUM_MODES = 384


@dataclasses.dataclass(frozen=True)
class Lesion:
    """A spherical low-contrast liver lesion of one virtual patient.

    centre_mm: (x, y, z) in mm (x: image columns, y: image rows, z: slice position).
    contrast_hu: HU relative to the surrounding liver (negative: hypodense).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float


@dataclasses.dataclass(frozen=True)
class LesionSection:
    """The cross-section of a lesion in one slice: centre (row, col) and radius in pixels."""

    lesion_index: int
    centre_px: tuple[float, float]
    radius_px: float
    radius_mm: float
    contrast_hu: float


@dataclasses.dataclass(frozen=True, eq=False)
class SliceMeta:
    """What is where in one slice.

    labels: [H, W] uint8 index into ``LABEL_NAMES``: the tissue covering most of each pixel.
    organ_centres_px: tissue name -> (row, col) of its pixel deepest inside that tissue's label.
    lesions: the lesions this slice cuts (empty for most slices).
    """

    patient_seed: int
    slice_index: int
    z_mm: float
    pixel_size_mm: float
    labels: np.ndarray
    organ_centres_px: dict[str, tuple[int, int]]
    lesions: tuple[LesionSection, ...]


def default_pixel_size_mm(size_px: int) -> float:
    """Pixel size (mm) that puts ``size_px`` pixels across the default ``FOV_MM`` field of view."""
    return FOV_MM / size_px


# --------------------------------------------------------------------------------------------
# Signed distances (mm, negative inside). Arrays broadcast; scalars work too.


def _fourier(c, s, coeffs: np.ndarray):
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


def _blob_sdf(x, y, cx, cy, rx, ry, angle=0.0, coeffs=None):
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
        f, df = _fourier(c, s, coeffs)
        radius = radius * f
        g = g + df / f
    return (r - radius) / np.sqrt(1.0 + g * g)


def _circle_sdf(x, y, cx, cy, radius):
    return np.hypot(x - cx, y - cy) - radius


def _segment_distance(x, y, z, a, b):
    """Distance (mm) from points (x, y, z) to the 3-D segment a-b and the nearest point's y."""
    d = b - a
    length2 = float(d @ d) + 1e-12
    s = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / length2
    s = np.clip(s, 0.0, 1.0)
    px, py, pz = a[0] + s * d[0], a[1] + s * d[1], a[2] + s * d[2]
    return np.sqrt((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2), py


def _cap(t, t0: float, t1: float):
    """Ellipsoid-cap profile: 1 at the middle of [t0, t1], sqrt-falling to 0 at its ends."""
    u = (2.0 * t - t0 - t1) / (t1 - t0)
    return np.sqrt(np.maximum(0.0, 1.0 - u * u))


def _smoothstep(v):
    v = np.clip(v, 0.0, 1.0)
    return v * v * (3.0 - 2.0 * v)


def _wrap(angle):
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------
# The patient: all parameters in mm, drawn once from the seed.


@dataclasses.dataclass(frozen=True, eq=False)
class _Tube:
    """A 3-D polyline tube: segments a[i] -> b[i] (mm, [N, 3]) with radii [N] (mm)."""

    a: np.ndarray
    b: np.ndarray
    radius: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class _Bowel:
    tube: _Tube
    wall_mm: float
    content: str
    gas_level: float


@dataclasses.dataclass(frozen=True, eq=False)
class _Anatomy:
    body: dict
    hu: dict
    organ: dict
    ribs: tuple
    vessel_trunks: _Tube
    liver_vessels: _Tube
    mesenteric: _Tube
    bowel: tuple
    calcifications: tuple
    texture_modes: tuple
    lesions: tuple[Lesion, ...]


def _make_body(rng: np.random.Generator) -> dict:
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
                for r in (_body_radii(body, th, t)[0] for t in np.linspace(-0.2, 1.6, 7)))
    if reach > MAX_BODY_RADIUS_MM:
        for key in ("a", "b_ant", "b_post"):
            body[key] *= MAX_BODY_RADIUS_MM / reach
    return body


def _body_dims(body: dict, t):
    t = np.clip(t, -0.2, 1.6)
    grow = 1.0 + body["dz"][0] * (t - 0.5) + body["dz"][1] * np.sin(np.pi * t)
    return body["a"] * grow, body["b_ant"] * grow, body["b_post"] * grow


def _body_radii(body: dict, th, t: float):
    """Radii (mm) of the skin surface and of the inner edges of skin, fat and muscle at angle th.

    th is measured from +x towards +y (posterior) about the body centre. Also returns R'/R of the
    outline, used to turn radial differences into normal distances.
    """
    a, b_ant, b_post = _body_dims(body, t)
    c, s = np.cos(th), np.sin(th)
    posterior = s > 0
    b = np.where(posterior, b_post, b_ant)
    n = np.where(posterior, body["n_post"], body["n_ant"])
    ca, sb = np.abs(c) / a, np.abs(s) / b
    ssum = ca ** n + sb ** n
    radius = ssum ** (-1.0 / n)
    g = (ca ** (n - 1.0) * np.sign(c) * s / a - sb ** (n - 1.0) * np.sign(s) * c / b) / ssum
    f, df = _fourier(c, s, body["shape"])
    radius = radius * f
    g = g + df / f
    fat_f, _ = _fourier(c, s, body["fat_shape"])
    fat = body["fat"] * np.maximum(0.2, (1.0 - 0.3 * s + 0.15 * c * c) * fat_f)
    mus_f, _ = _fourier(c, s, body["muscle_shape"])
    from_back = np.abs(_wrap(th - np.pi / 2))
    back = np.exp(-(from_back / body["paraspinal_width"]) ** 2)
    quadratus = np.exp(-((from_back - 0.7) / 0.25) ** 2)
    # The linea alba: a thin fascial gap between the two rectus muscles.
    alba = np.exp(-(_wrap(th + np.pi / 2) / 0.035) ** 2)
    muscle = (body["muscle"] * mus_f * (0.65 + 0.6 * c * c) * (1.0 - 0.85 * alba)
              + body["paraspinal"] * back + body["quadratus"] * quadratus)
    r_skin = radius - body["skin"]
    r_fat = r_skin - fat
    r_cav = r_fat - muscle
    return radius, r_skin, r_fat, r_cav, g


def _cavity_sdf(body: dict, x, y, t: float):
    dx, dy = x - body["cx"], y - body["cy"]
    _, _, _, r_cav, g = _body_radii(body, np.arctan2(dy, dx), t)
    return (np.hypot(dx, dy) - r_cav) / np.sqrt(1.0 + g * g)


def _inner_dims(body: dict) -> tuple[float, float, float]:
    """Nominal cavity half-width and anterior/posterior depths (mm), for placing organs."""
    a, b_ant, b_post = _body_dims(body, 0.5)
    inner_a = a - body["skin"] - 1.15 * body["fat"] - body["muscle"]
    inner_b = b_ant - body["skin"] - 1.3 * body["fat"] - body["muscle"]
    inner_p = b_post - body["skin"] - 0.7 * body["fat"] - body["muscle"]
    return inner_a, inner_b, inner_p


def _make_hu(rng: np.random.Generator) -> dict:
    u = rng.uniform
    return {
        "skin": u(20, 40), "fat": u(-110, -90), "visceral_fat": u(-105, -85),
        "muscle": u(40, 52), "liver": u(58, 72), "spleen": u(45, 56),
        "kidney_cortex": u(135, 165), "kidney_medulla": u(85, 110), "renal_pelvis": u(5, 20),
        "aorta": u(160, 200), "ivc": u(135, 165), "portal": u(140, 165), "gallbladder": u(0, 20),
        "bone": u(200, 300), "cortex": u(720, 900), "arch": u(380, 480), "disc": u(80, 100),
        "csf": u(10, 30), "rib_cortex": u(700, 850), "rib_marrow": u(180, 280),
        "cartilage": u(100, 180), "bowel_wall": u(60, 90), "bowel_fluid": u(10, 30),
        "oral_contrast": u(200, 320), "stool": u(-60, 20), "stomach_wall": u(60, 85),
        "stomach_content": u(5, 25), "pancreas": u(80, 105), "calcification": u(500, 900),
        "lung": u(-880, -820), "oral": float(rng.uniform() < 0.3),
    }


def _make_organs(rng: np.random.Generator, body: dict) -> dict:
    u, nrm = rng.uniform, rng.normal
    ai, bi, bp = _inner_dims(body)
    cx, cy = body["cx"], body["cy"]
    _, _, b_post = _body_dims(body, 0.5)
    back_fat = body["skin"] + 0.7 * body["fat"]
    y_tip = cy + b_post - back_fat - u(2.0, 6.0)
    canal_r = u(8.0, 10.0)
    y_canal = y_tip - u(30.0, 38.0)
    vb_rx, vb_ry = u(21.0, 25.0), u(15.0, 18.0)
    y_vb = y_canal - canal_r - u(2.5, 4.0) - vb_ry
    r_ao = u(10.0, 12.5)
    organ = {
        "spine": {"x": cx + nrm(0, 2), "y_vb": y_vb, "rx": vb_rx, "ry": vb_ry,
                  "canal_x": 1.15 * canal_r, "canal_y": canal_r, "y_canal": y_canal,
                  "y_tip": y_tip, "cortex": u(1.2, 2.0), "period": u(33.0, 38.0),
                  "disc": u(7.5, 10.0), "phase": u(0.0, 40.0), "shape": nrm(0, 0.012, (4, 2))},
        "aorta": {"x": cx + u(8.0, 18.0), "y": y_vb - vb_ry - r_ao - u(2.0, 5.0), "r": r_ao},
        "ivc": {"x": cx - u(18.0, 28.0), "y": y_vb - vb_ry - u(4.0, 9.0), "rx": u(11.0, 15.0),
                "ry": u(7.0, 10.0), "angle": u(0.1, 0.5)},
        "liver": {
            "e1": (cx - u(0.36, 0.44) * ai, cy + u(-0.05, 0.08) * bi, u(0.62, 0.72) * ai,
                   u(0.95, 1.1) * bi, nrm(0, 0.12)),
            "e1_shape": nrm(0, 1.0, (5, 2)) * np.array([[0.02], [0.03], [0.02], [0.015], [0.01]]),
            "e1_range": (u(-0.3, -0.2), u(0.82, 0.95)), "drift": u(0.1, 0.2),
            "e2": (cx + u(0.0, 0.12) * ai, cy - u(0.5, 0.6) * bi, u(0.38, 0.52) * ai,
                   u(0.22, 0.32) * bi, u(0.15, 0.4)),
            "e2_shape": nrm(0, 1.0, (4, 2)) * np.array([[0.03], [0.03], [0.02], [0.015]]),
            "e2_range": (u(-0.35, -0.25), u(0.4, 0.55)),
            "notch": vb_rx + u(6.0, 10.0),
        },
        "gallbladder": {"present": rng.uniform() < 0.85, "x": cx - u(0.15, 0.28) * ai,
                        "y": cy - u(0.25, 0.4) * bi, "rx": u(10.0, 16.0), "ry": u(18.0, 26.0),
                        "angle": u(-0.6, 0.6), "range": (u(0.42, 0.5), u(0.68, 0.78))},
        "spleen": {"x": cx + u(0.55, 0.65) * ai, "y": cy + u(0.3, 0.45) * bp,
                   "rx": u(0.26, 0.34) * ai, "ry": u(0.13, 0.18) * ai, "angle": u(-1.15, -0.75),
                   "range": (u(-0.15, -0.05), u(0.42, 0.55)), "shape": nrm(0, 0.04, (4, 2))},
        "stomach": {"x": cx + u(0.25, 0.38) * ai, "y": cy - u(0.1, 0.2) * bi,
                    "rx": u(0.26, 0.34) * ai, "ry": u(0.3, 0.42) * bi, "angle": u(-0.7, -0.3),
                    "range": (u(-0.25, -0.15), u(0.45, 0.58)), "wall": u(3.0, 5.0),
                    "gas": u(-0.9, -0.2), "shape": nrm(0, 0.04, (4, 2))},
        "psoas": {"r": u(15.0, 20.0), "start": u(0.4, 0.5)},
    }
    kidneys = []
    for side in (-1.0, 1.0):
        t0 = u(0.37, 0.45) if side < 0 else u(0.28, 0.35)
        kidneys.append({
            "side": side, "x": cx + side * (vb_rx + u(40.0, 52.0)), "y": y_vb + u(2.0, 14.0),
            "rx": u(28.0, 34.0), "ry": u(19.0, 24.0), "angle": -side * u(0.45, 0.8),
            "range": (t0, t0 + u(0.7, 0.8)), "shape": nrm(0, 0.03, (4, 2)),
            "pyramids": u(0.0, 2.0 * np.pi), "cortex": u(5.0, 7.0),
        })
    organ["kidneys"] = kidneys
    ao = organ["aorta"]
    organ["sma"] = {"x": ao["x"] - u(0.0, 4.0), "y": ao["y"] - ao["r"] - u(8.0, 14.0),
                    "r": u(3.0, 4.0), "start": u(0.38, 0.45)}
    organ["pancreas"] = _Tube(
        a=np.array([[cx + 0.45 * ai, cy + 0.15 * bp, 0.36 * ABDOMEN_LENGTH_MM],
                    [ao["x"] - 5.0, ao["y"] - ao["r"] - 18.0, 0.44 * ABDOMEN_LENGTH_MM]]),
        b=np.array([[ao["x"] - 5.0, ao["y"] - ao["r"] - 18.0, 0.44 * ABDOMEN_LENGTH_MM],
                    [cx - 0.2 * ai, ao["y"] - 10.0, 0.55 * ABDOMEN_LENGTH_MM]]),
        radius=np.array([u(8.0, 11.0), u(11.0, 14.0)]))
    organ["splenic_vein"] = _Tube(
        a=organ["pancreas"].a + np.array([0.0, 10.0, 0.0]),
        b=organ["pancreas"].b + np.array([0.0, 10.0, 0.0]), radius=np.array([3.5, 4.5]))
    return organ


def _liver_parts(body: dict, organ: dict, t: float) -> tuple[tuple, tuple]:
    """The two ellipses (cx, cy, rx, ry, angle) of the right and left liver lobes at t."""
    lv = organ["liver"]
    cx1, cy1, rx1, ry1, ang1 = lv["e1"]
    s1 = _cap(t, *lv["e1_range"])
    ai = _inner_dims(body)[0]
    # The inferior tip of the right lobe lies lateral and anterior.
    e1 = (cx1 - lv["drift"] * ai * t, cy1 - 0.1 * ry1 * t, rx1 * s1, ry1 * s1, ang1)
    cx2, cy2, rx2, ry2, ang2 = lv["e2"]
    s2 = _cap(t, *lv["e2_range"])
    return e1, (cx2, cy2, rx2 * s2, ry2 * s2, ang2)


def _occluder_sdf(organ: dict, x, y, t):
    """Structures painted over the liver (IVC, kidneys in their fat, gallbladder); t may vary."""
    ivc = organ["ivc"]
    out = _blob_sdf(x, y, ivc["x"], ivc["y"], ivc["rx"], ivc["ry"], ivc["angle"])
    parts = [(k, (9.0, 7.0)) for k in organ["kidneys"]]
    if organ["gallbladder"]["present"]:
        parts.append((organ["gallbladder"], (0.0, 0.0)))
    for part, (pad_x, pad_y) in parts:
        s = _cap(t, *part["range"])
        d = _blob_sdf(x, y, part["x"], part["y"], part["rx"] * s + pad_x, part["ry"] * s + pad_y,
                      part["angle"])
        out = np.minimum(out, np.where(s > 0.05, d, np.inf))
    return out


def _liver_sdf(body: dict, organ: dict, x, y, t: float, cavity=None):
    """The liver: two lobes inside the cavity, clear of the spine and of what lies over it."""
    lv = organ["liver"]
    e1, e2 = _liver_parts(body, organ, t)
    d1 = _blob_sdf(x, y, *e1, lv["e1_shape"])
    d2 = _blob_sdf(x, y, *e2, lv["e2_shape"])
    sp = organ["spine"]
    notch = _circle_sdf(x, y, sp["x"], sp["y_vb"], lv["notch"])
    if cavity is None:
        cavity = _cavity_sdf(body, x, y, t)
    liver = np.maximum(np.maximum(np.minimum(d1, d2), -notch), cavity + 1.5)
    return np.maximum(liver, 1.0 - _occluder_sdf(organ, x, y, t))


def _grow_tree(rng, roots, accept, max_depth: int, scale_mm: float = 1.0) -> _Tube:
    """Grow branching vessel trees breadth-first; one vectorised acceptance test per generation.

    roots: (start [3], direction [3], radius) in mm. accept(points [P, 3], radius [P]) -> [P] bool
    says which branch midpoints and end points lie where the vessel may run.
    """
    frontier = [(np.asarray(p, float), np.asarray(d, float) / np.linalg.norm(d), r)
                for p, d, r in roots]
    segments = []
    for depth in range(max_depth + 1):
        children = []
        for start, direction, radius in frontier:
            for _ in range(int(rng.integers(2, 4)) if depth else 1):
                d = direction + rng.normal(0.0, 0.65, (12, 3)) * np.array([1.0, 1.0, 0.8])
                d /= np.linalg.norm(d, axis=1, keepdims=True)
                length = scale_mm * rng.uniform(16.0, 30.0, 12) * 0.88 ** depth
                children.append((start, d, start + length[:, None] * d, radius))
        if not children:
            break
        ends = np.stack([c[2] for c in children])  # [C, 12, 3]
        starts = np.stack([c[0] for c in children])[:, None, :]
        radii = np.repeat(np.array([c[3] for c in children]), 12)
        pts = np.concatenate([(0.5 * (starts + ends)).reshape(-1, 3), ends.reshape(-1, 3)])
        ok = accept(pts, np.concatenate([radii, radii])).reshape(2, len(children), 12).all(0)
        frontier = []
        for (start, d, end, radius), good in zip(children, ok, strict=True):
            hits = np.nonzero(good)[0]
            if hits.size == 0:
                continue
            i = hits[0]
            segments.append((start, end[i], radius))
            child_r = radius * rng.uniform(0.66, 0.78)
            if child_r >= 1.0:
                frontier.append((end[i], d[i], child_r))
    if not segments:
        return _Tube(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    a, b, r = zip(*segments, strict=True)
    return _Tube(np.array(a), np.array(b), np.array(r))


def _deep_liver_point(rng, body, organ, x, y, t) -> np.ndarray:
    """A point well inside the liver near (x, y, t): roots of the intrahepatic vessel trees."""
    cand = np.stack([rng.normal(x, 20.0, 256), rng.normal(y, 20.0, 256),
                     np.clip(rng.normal(t, 0.05, 256), 0.0, 0.8)], axis=1)
    depth = _liver_sdf(body, organ, cand[:, 0], cand[:, 1], cand[:, 2])
    score = depth + 0.3 * np.hypot(cand[:, 0] - x, cand[:, 1] - y)
    i = int(np.argmin(score))
    return np.array([cand[i, 0], cand[i, 1], cand[i, 2] * ABDOMEN_LENGTH_MM])


def _make_vessels(rng, body, organ) -> tuple[_Tube, _Tube, _Tube]:
    """Portal and hepatic trees in the liver, their trunks outside it, and mesenteric vessels."""
    ai, bi, _ = _inner_dims(body)
    length = ABDOMEN_LENGTH_MM
    porta = _deep_liver_point(rng, body, organ, body["cx"] - 0.25 * ai, body["cy"] - 0.05 * bi,
                              0.36)
    confluence = np.array([organ["pancreas"].b[0][0], organ["pancreas"].b[0][1] + 8.0,
                           0.46 * length])
    ivc = organ["ivc"]
    ivc_top = np.array([ivc["x"], ivc["y"], 0.05 * length])
    hepatic = _deep_liver_point(rng, body, organ, ivc["x"] - 25.0, ivc["y"] - 20.0, 0.08)
    trunks = _Tube(a=np.stack([confluence, ivc_top]), b=np.stack([porta, hepatic]),
                   radius=np.array([rng.uniform(6.0, 7.5), rng.uniform(5.0, 6.5)]))
    roots = [(porta, d, rng.uniform(4.5, 5.5)) for d in
             ((-1.0, 0.1, -0.3), (-0.6, -0.6, -0.2), (-0.7, 0.3, 0.4), (0.6, -0.5, -0.4))]
    roots += [(hepatic, d, rng.uniform(4.0, 5.5)) for d in
              ((-1.0, -0.1, 0.6), (-0.3, -1.0, 0.5), (0.6, -0.9, 0.4))]

    def in_liver(p, r):
        return _liver_sdf(body, organ, p[:, 0], p[:, 1], p[:, 2] / length) < -(r + 1.5)

    liver = _grow_tree(rng, roots, in_liver, max_depth=4)
    sma = organ["sma"]
    sp = organ["spine"]
    lo = np.array([body["cx"] - 0.6 * ai, body["cy"] - 0.8 * bi, sma["start"] * length])
    hi = np.array([body["cx"] + 0.6 * ai, sp["y_vb"] - sp["ry"] - 8.0, 1.5 * length])

    def in_mesentery(p, r):
        inside = np.all((p > lo) & (p < hi), axis=1)
        return inside & (_cavity_sdf(body, p[:, 0], p[:, 1], p[:, 2] / length) < -(r + 8.0))

    start = np.array([sma["x"], sma["y"], sma["start"] * length])
    mesentery = _grow_tree(rng, [(start, (0.0, -0.5, 1.0), sma["r"])], in_mesentery,
                           max_depth=5, scale_mm=1.3)
    return trunks, liver, mesentery


def _random_walk_tube(rng, start, box_lo, box_hi, steps, step_mm, radius) -> _Tube:
    points = [np.asarray(start, float)]
    direction = rng.normal(0.0, 1.0, 3)
    for _ in range(steps):
        direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.7, 3)
        direction /= np.linalg.norm(direction)
        nxt = points[-1] + step_mm * direction
        # Reflect at the box walls so that the loop stays in its compartment.
        over, under = nxt > box_hi, nxt < box_lo
        direction = np.where(over | under, -direction, direction)
        nxt = np.clip(nxt, box_lo, box_hi)
        points.append(nxt)
    p = np.array(points)
    return _Tube(a=p[:-1], b=p[1:], radius=np.full(len(p) - 1, radius))


def _make_bowel(rng, body, organ) -> tuple[_Bowel, ...]:
    ai, bi, _ = _inner_dims(body)
    cx, cy = body["cx"], body["cy"]
    length = ABDOMEN_LENGTH_MM
    sp = organ["spine"]
    loops = []
    lo = np.array([cx - 0.62 * ai, cy - 0.85 * bi, 0.45 * length])
    hi = np.array([cx + 0.62 * ai, sp["y_vb"] - sp["ry"] - 25.0, 1.4 * length])
    for _ in range(int(rng.integers(5, 8))):
        start = rng.uniform(lo, hi)
        radius = rng.uniform(8.0, 13.0)
        tube = _random_walk_tube(rng, start, lo, hi, int(rng.integers(10, 18)),
                                 rng.uniform(12.0, 18.0), radius)
        content = "oral" if rng.uniform() < 0.7 else "fluid"
        gas = rng.uniform(-0.95, -0.4) if rng.uniform() < 0.45 else -2.0
        loops.append(_Bowel(tube, rng.uniform(1.5, 2.5), content, gas))

    def wavy(points, radius):
        p = np.array(points, float)
        p[:, :2] += rng.normal(0.0, 4.0, (len(p), 2))
        return _Tube(a=p[:-1], b=p[1:], radius=np.full(len(p) - 1, radius))

    zs = np.linspace(0.5, 1.6, 8) * length
    xa, ya = cx - 0.66 * ai, cy + rng.uniform(-0.1, 0.15) * bi
    loops.append(_Bowel(wavy([(xa, ya, z) for z in zs], rng.uniform(17.0, 22.0)),
                        2.0, "stool", rng.uniform(-0.9, -0.3)))
    zs = np.linspace(0.25, 1.6, 9) * length
    xd, yd = cx + 0.72 * ai, cy + rng.uniform(0.05, 0.25) * bi
    loops.append(_Bowel(wavy([(xd, yd, z) for z in zs], rng.uniform(12.0, 16.0)),
                        2.0, "stool", rng.uniform(-0.9, 0.0)))
    sag = rng.uniform(0.55, 0.8)
    transverse = [(xa, ya - 0.2 * bi, 0.55 * length),
                  (cx - 0.35 * ai, cy - sag * bi, 0.62 * length),
                  (cx + 0.1 * ai, cy - sag * bi, 0.66 * length),
                  (cx + 0.45 * ai, cy - 0.6 * bi, 0.5 * length), (xd, yd - 0.2 * bi, 0.3 * length)]
    loops.append(_Bowel(wavy(transverse, rng.uniform(15.0, 20.0)), 2.0, "stool",
                        rng.uniform(-0.8, 0.2)))
    return tuple(loops)


def _make_ribs(rng, body) -> tuple:
    ribs = []
    spacing = rng.uniform(22.0, 28.0)
    slope = rng.uniform(50.0, 65.0)  # mm of z per radian of arc: ribs descend anteriorly
    z_top = rng.uniform(-110.0, -90.0)
    # Ribs 7..12: 7-10 reach the costal margin through cartilage, 11-12 float.
    ends = ((1.95, 2.75), (1.9, 2.55), (1.85, 2.35), (1.8, 2.15), (1.55, 0.0), (1.15, 0.0))
    for side in (-1.0, 1.0):
        for k, (bony_end, cartilage_end) in enumerate(ends):
            ribs.append({
                "side": side, "z0": z_top + k * spacing + rng.normal(0, 2.0),
                "slope": slope * rng.uniform(0.93, 1.07), "phi0": rng.uniform(0.3, 0.4),
                "bony_end": bony_end + rng.normal(0, 0.05),
                "cartilage_end": cartilage_end + (rng.normal(0, 0.05) if cartilage_end else 0.0),
                "height": rng.uniform(9.0, 12.0), "thick": rng.uniform(5.0, 7.5),
                "cortex": rng.uniform(1.0, 1.6),
            })
    return tuple(ribs)


def _make_calcifications(rng, organ) -> tuple:
    if rng.uniform() > 0.5:
        return ()
    ao = organ["aorta"]
    out = []
    for _ in range(int(rng.integers(1, 5))):
        angle = rng.uniform(0.2, np.pi - 0.2)  # posterior wall
        out.append((ao["x"] + ao["r"] * math.cos(angle), ao["y"] + ao["r"] * math.sin(angle),
                    rng.uniform(0.1, 1.3) * ABDOMEN_LENGTH_MM, rng.uniform(1.0, 2.2),
                    rng.uniform(3.0, 12.0)))
    return tuple(out)


def _make_texture_modes(rng) -> tuple:
    modes = []
    for corr in _CORR_MM:
        k = rng.normal(0.0, 1.0 / corr, (_NUM_MODES, 3))
        modes.append((k, rng.uniform(0.0, 2.0 * np.pi, _NUM_MODES)))
    return tuple(modes)


def _make_lesions(rng, body, organ, contrast_hu, diameter_mm) -> tuple[Lesion, ...]:
    cx1, cy1, rx1, ry1, _ = organ["liver"]["e1"]
    lesions: list[Lesion] = []
    for _ in range(int(rng.integers(4, 9))):
        radius = 0.5 * (diameter_mm[0] + rng.uniform() * (diameter_mm[1] - diameter_mm[0]))
        contrast = contrast_hu[0] + rng.uniform() * (contrast_hu[1] - contrast_hu[0])
        # Candidate centres in one batch; keep the first deep enough inside the liver.
        t = rng.uniform(0.05, 0.7, 64)
        x = rng.uniform(cx1 - rx1, cx1 + rx1, 64)
        y = rng.uniform(cy1 - ry1, cy1 + ry1, 64)
        z = t * ABDOMEN_LENGTH_MM
        ok = _liver_sdf(body, organ, x, y, t) < -(radius + 5.0)
        for les in lesions:
            gap = np.sqrt((x - les.centre_mm[0]) ** 2 + (y - les.centre_mm[1]) ** 2
                          + (z - les.centre_mm[2]) ** 2)
            ok &= gap > radius + les.radius_mm + 4.0
        hits = np.nonzero(ok)[0]
        if hits.size:
            i = hits[0]
            lesions.append(Lesion((float(x[i]), float(y[i]), float(z[i])), float(radius),
                                  float(contrast)))
    return tuple(lesions)


def _make_anatomy(seed: int, contrast_hu: tuple[float, float],
                  diameter_mm: tuple[float, float]) -> _Anatomy:
    # Independent streams per part, so that asking for other lesions leaves the anatomy unchanged.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    body = _make_body(streams[0])
    organ = _make_organs(streams[2], body)
    trunks, vessels, mesentery = _make_vessels(streams[3], body, organ)
    return _Anatomy(
        body=body, hu=_make_hu(streams[1]), organ=organ, ribs=_make_ribs(streams[5], body),
        vessel_trunks=trunks, liver_vessels=vessels, mesenteric=mesentery,
        bowel=_make_bowel(streams[4], body, organ),
        calcifications=_make_calcifications(streams[6], organ),
        texture_modes=_make_texture_modes(streams[6]),
        lesions=_make_lesions(streams[7], body, organ, contrast_hu, diameter_mm))


# --------------------------------------------------------------------------------------------
# Rendering one slice.


def _texture_field(modes, coord: np.ndarray, z_mm: float, pixel_mm: float) -> np.ndarray:
    """Unit-variance 3-D Gaussian random field cut at z, integrated over each pixel; [H, W].

    A sum of random cosines cos(k.x + phase) (k ~ N(0, I / corr^2): Gaussian covariance). The
    pixel average of each cosine is the cosine times sinc(kx p / 2 pi) sinc(ky p / 2 pi), so any
    pixel size samples the same continuous field. cos(a + b) = cos a cos b - sin a sin b makes the
    evaluation two matrix products.
    """
    k, phase = modes
    num = k.shape[0]
    amp = math.sqrt(2.0 / num) * np.sinc(k[:, 0] * pixel_mm / (2 * np.pi)) * np.sinc(
        k[:, 1] * pixel_mm / (2 * np.pi))
    # Phases are reduced modulo 2 pi in float64 before the float32 trigonometry.
    ax = np.mod(coord[:, None] * k[None, :, 0] + (phase + k[:, 2] * z_mm)[None, :], 2 * np.pi)
    ay = np.mod(coord[:, None] * k[None, :, 1], 2 * np.pi)
    ax, ay = ax.astype(np.float32), ay.astype(np.float32)
    amp = amp.astype(np.float32)
    left = np.concatenate([np.cos(ay) * amp, -np.sin(ay) * amp], axis=1)
    right = np.concatenate([np.cos(ax), np.sin(ax)], axis=1)
    # einsum's own loops: BLAS threads stall on small products when the cores are shared.
    return np.einsum("ik,jk->ij", left, right)


@dataclasses.dataclass(frozen=True, eq=False)
class _Window:
    rows: slice
    cols: slice
    x: np.ndarray  # [1, w] mm
    y: np.ndarray  # [h, 1] mm


class _Canvas:
    """The slice being painted: HU image, dominant-tissue labels and the texture fields."""

    def __init__(self, anat: _Anatomy, z_mm: float, size_px: int, pixel_mm: float,
                 with_labels: bool):
        self.n, self.p = size_px, pixel_mm
        self.coord = (np.arange(size_px) - (size_px - 1) / 2.0) * pixel_mm
        self.hu = np.full((size_px, size_px), AIR_HU)
        self.labels = np.zeros((size_px, size_px), np.uint8) if with_labels else None
        self.fields = np.stack([_texture_field(m, self.coord, z_mm, pixel_mm)
                                for m in anat.texture_modes])
        self.full = self.window(-1e9, 1e9, -1e9, 1e9)
        self.polar: tuple[np.ndarray, ...] = ()

    def window(self, x0: float, x1: float, y0: float, y1: float) -> _Window:
        half = (self.n - 1) / 2.0

        def index(v: float, pad: int) -> int:
            v = min(max(float(v) / self.p + half, -2.0), self.n + 2.0)
            return min(max(math.floor(v) + pad, 0), self.n)

        rows = slice(index(y0, -1), index(y1, 2))
        cols = slice(index(x0, -1), index(x1, 2))
        return _Window(rows, cols, self.coord[cols][None, :], self.coord[rows][:, None])

    def around(self, cx: float, cy: float, rx: float, ry: float | None = None) -> _Window:
        ry = rx if ry is None else ry
        return self.window(cx - rx, cx + rx, cy - ry, cy + ry)

    def texture(self, win: _Window, tissue: str) -> np.ndarray:
        w = _TEXTURE[tissue]
        f = self.fields[:, win.rows, win.cols]
        return w[0] * f[0] + w[1] * f[1] + w[2] * f[2]

    def value(self, win: _Window, base: float, tissue: str) -> np.ndarray:
        return base + self.texture(win, tissue)

    def paint(self, win: _Window, sdf, value, label: str, blur_mm: float = 0.4) -> None:
        sub = self.hu[win.rows, win.cols]
        if sub.size == 0:
            return
        occ = np.clip(0.5 - np.asarray(sdf) / math.hypot(self.p, blur_mm), 0.0, 1.0)
        occ = np.broadcast_to(occ, sub.shape)
        sub += occ * (value - sub)
        if self.labels is not None:
            self.labels[win.rows, win.cols][occ >= 0.5] = _ID[label]


def _paint_body(cv: _Canvas, anat: _Anatomy, t: float) -> np.ndarray:
    body, hu = anat.body, anat.hu
    w = cv.full
    dx, dy = w.x - body["cx"], w.y - body["cy"]
    r, th = np.hypot(dx, dy), np.arctan2(dy, dx)
    radius, r_skin, r_fat, r_cav, g = _body_radii(body, th, t)
    norm = np.sqrt(1.0 + g * g)
    cv.paint(w, (r - radius) / norm, cv.value(w, hu["skin"], "skin"), "skin")
    cv.paint(w, (r - r_skin) / norm, cv.value(w, hu["fat"], "fat"), "subcutaneous_fat")
    cv.paint(w, (r - r_fat) / norm, cv.value(w, hu["muscle"], "muscle"), "muscle")
    cavity = (r - r_cav) / norm
    cv.paint(w, cavity, cv.value(w, hu["visceral_fat"], "fat"), "visceral_fat")
    cv.polar = (r, th, r_fat, r_cav)
    return cavity


def _paint_ribs(cv: _Canvas, anat: _Anatomy, z: float) -> None:
    body, hu = anat.body, anat.hu
    r, th, r_fat, r_cav = cv.polar
    t = z / ABDOMEN_LENGTH_MM
    for rib in anat.ribs:
        phi = rib["phi0"] + (z - rib["z0"]) / rib["slope"]
        end = max(rib["bony_end"], rib["cartilage_end"])
        if not rib["phi0"] - 0.3 <= phi <= end + 0.3:
            continue
        theta = np.pi / 2 - rib["side"] * phi
        _, _, rf, rc, _ = _body_radii(body, np.array(theta), t)
        depth = float(rf - rc)
        radial = float(rf) - min(0.5 * depth, rib["thick"] / 2 + 3.0)
        half_len = min(rib["height"] * radial / (2.0 * rib["slope"]), 22.0)
        half_thick = rib["thick"] / 2.0
        cx = body["cx"] + radial * math.cos(theta)
        cy = body["cy"] + radial * math.sin(theta)
        win = cv.around(cx, cy, half_len + 6.0)
        rr = r[win.rows, win.cols]
        arc = _wrap(th[win.rows, win.cols] - theta) * radial
        # Along the arc the cut passes through other parts of the rib: phi at each pixel decides
        # where the rib starts (near the spine), turns into cartilage and ends.
        phi_px = phi - rib["side"] * arc / radial
        sdf = np.maximum(_blob_sdf(arc, rr, 0.0, radial, half_len, half_thick),
                         (rib["phi0"] - phi_px) * radial)
        if rib["cartilage_end"] > rib["bony_end"]:
            cartilage = np.maximum(np.maximum(sdf, (phi_px - rib["cartilage_end"]) * radial),
                                   (rib["bony_end"] - phi_px) * radial)
            cv.paint(win, cartilage, cv.value(win, hu["cartilage"], "disc"), "costal_cartilage")
        bone_cut = (phi_px - rib["bony_end"]) * radial
        inner = _blob_sdf(arc, rr, 0.0, radial, half_len - rib["cortex"],
                          half_thick - rib["cortex"])
        cv.paint(win, np.maximum(sdf, bone_cut), hu["rib_cortex"], "rib_cortex", blur_mm=0.2)
        cv.paint(win, np.maximum(np.maximum(inner, bone_cut), sdf + rib["cortex"]),
                 cv.value(win, hu["rib_marrow"], "bone"), "rib_marrow", blur_mm=0.2)


def _paint_tube(cv: _Canvas, tube: _Tube, z: float, sdf_fn, separate: bool = False) -> None:
    """Paint the segments of a tube that reach the plane z; sdf_fn(win, dist, nearest_y).

    The whole tube is one shape (so that wall, lumen and gas layer correctly), or with
    ``separate`` each segment is painted on its own small window (thin vessel trees).
    """
    if tube.a.shape[0] == 0:
        return
    zmin = np.minimum(tube.a[:, 2], tube.b[:, 2]) - tube.radius
    zmax = np.maximum(tube.a[:, 2], tube.b[:, 2]) + tube.radius
    hit = np.nonzero((zmin <= z) & (zmax >= z))[0]
    for group in ([hit[i:i + 1] for i in range(hit.size)] if separate else [hit]):
        if group.size == 0:
            continue
        pad = tube.radius[group].max() + 2.0
        pts = np.concatenate([tube.a[group], tube.b[group]])
        win = cv.window(pts[:, 0].min() - pad, pts[:, 0].max() + pad,
                        pts[:, 1].min() - pad, pts[:, 1].max() + pad)
        best = np.full((win.y.shape[0], win.x.shape[1]), np.inf)
        near_y = np.zeros_like(best)
        for i in group:
            dist, py = _segment_distance(win.x, win.y, z, tube.a[i], tube.b[i])
            d = dist - tube.radius[i]
            closer = d < best
            best = np.where(closer, d, best)
            near_y = np.where(closer, py, near_y)
        sdf_fn(win, best, near_y)


def _paint_bowel(cv: _Canvas, anat: _Anatomy, z: float, cavity: np.ndarray) -> None:
    hu = anat.hu
    _paint_tube(cv, anat.mesenteric, z, lambda w, d, _y: cv.paint(
        w, d, cv.value(w, hu["portal"], "blood"), "vessel", blur_mm=0.5), separate=True)
    for loop in anat.bowel:
        radius = float(loop.tube.radius[0])

        def draw(win, d, near_y, loop=loop, radius=radius):
            cav = cavity[win.rows, win.cols] + 2.0
            wall = np.maximum(d, cav)
            cv.paint(win, wall, cv.value(win, hu["bowel_wall"], "muscle"), "bowel_wall")
            lumen = np.maximum(d + loop.wall_mm, cav)
            if loop.content == "stool":
                f = cv.fields[1, win.rows, win.cols]
                bubble = _smoothstep((f - 0.9) / 0.5)
                stool = hu["stool"] + cv.texture(win, "gut") * 3.0
                value = (1.0 - bubble) * stool + bubble * AIR_HU
                label = "colon_content"
            else:
                base = hu["oral_contrast"] if (loop.content == "oral" and hu["oral"]) else hu[
                    "bowel_fluid"]
                value, label = cv.value(win, base, "gut"), "bowel_content"
            cv.paint(win, lumen, value, label)
            if loop.gas_level > -1.0:
                # Gas rises to the anterior side (top of the image) above a flat fluid level.
                level = near_y + loop.gas_level * (radius - loop.wall_mm)
                cv.paint(win, np.maximum(lumen, win.y - level), AIR_HU, "gas")

        _paint_tube(cv, loop.tube, z, draw)


def _paint_stomach(cv: _Canvas, anat: _Anatomy, t: float, cavity: np.ndarray) -> None:
    st, hu = anat.organ["stomach"], anat.hu
    s = _cap(t, *st["range"])
    if s <= 0.05:
        return
    rx, ry = st["rx"] * s, st["ry"] * s
    cy = st["y"] + 0.25 * st["ry"] * (0.2 - t)
    win = cv.around(st["x"], cy, 1.3 * max(rx, ry) + 4.0)
    cav = cavity[win.rows, win.cols] + 2.0
    outer = np.maximum(_blob_sdf(win.x, win.y, st["x"], cy, rx, ry, st["angle"], st["shape"]),
                       cav)
    cv.paint(win, outer, cv.value(win, hu["stomach_wall"], "muscle"), "stomach_wall")
    lumen = outer + st["wall"]
    base = hu["oral_contrast"] if hu["oral"] else hu["stomach_content"]
    cv.paint(win, lumen, cv.value(win, base, "gut"), "stomach_content")
    level = cy + st["gas"] * ry
    cv.paint(win, np.maximum(lumen, win.y - level), AIR_HU, "gas")


def _paint_liver(cv: _Canvas, anat: _Anatomy, z: float, cavity: np.ndarray) -> None:
    lv, hu = anat.organ["liver"], anat.hu
    t = z / ABDOMEN_LENGTH_MM
    if max(_cap(t, *lv["e1_range"]), _cap(t, *lv["e2_range"])) <= 0.0:
        return
    boxes = []
    for cx, cy, rx, ry, _ in _liver_parts(anat.body, anat.organ, t):
        if rx > 0.0:
            reach = 1.15 * max(rx, ry)
            boxes.append((cx - reach, cx + reach, cy - reach, cy + reach))
    box = np.array(boxes)
    win = cv.window(box[:, 0].min(), box[:, 1].max(), box[:, 2].min(), box[:, 3].max())
    sdf = _liver_sdf(anat.body, anat.organ, win.x, win.y, t, cavity[win.rows, win.cols])
    liver_value = cv.value(win, hu["liver"], "liver")
    cv.paint(win, sdf, liver_value, "liver", blur_mm=0.6)

    def vessel(w, d, _near_y):
        inside = sdf[w.rows.start - win.rows.start:w.rows.stop - win.rows.start,
                     w.cols.start - win.cols.start:w.cols.stop - win.cols.start]
        cv.paint(w, np.maximum(d, inside + 0.5), cv.value(w, hu["portal"], "blood"),
                 "liver_vessel", blur_mm=0.5)

    _paint_tube(_SubCanvas(cv, win), anat.liver_vessels, z, vessel, separate=True)
    _paint_tube(cv, anat.vessel_trunks, z,
                lambda w, d, _y: cv.paint(w, d, cv.value(w, hu["portal"], "blood"), "vessel"))
    for les in anat.lesions:
        dz = z - les.centre_mm[2]
        if abs(dz) >= les.radius_mm:
            continue
        rho = math.sqrt(les.radius_mm ** 2 - dz ** 2)
        lw = cv.around(les.centre_mm[0], les.centre_mm[1], rho + 3.0)
        d = _circle_sdf(lw.x, lw.y, les.centre_mm[0], les.centre_mm[1], rho)
        value = cv.value(lw, hu["liver"] + les.contrast_hu, "liver")
        cv.paint(lw, d, value, "liver_lesion", blur_mm=0.6)


class _SubCanvas:
    """Restricts tube windows to a parent window, so crops of the parent's arrays line up."""

    def __init__(self, cv: _Canvas, parent: _Window):
        self.cv, self.parent = cv, parent

    def window(self, x0, x1, y0, y1) -> _Window:
        w = self.cv.window(x0, x1, y0, y1)
        pr, pc = self.parent.rows, self.parent.cols
        rows = slice(min(max(w.rows.start, pr.start), pr.stop), max(min(w.rows.stop, pr.stop),
                                                                    pr.start))
        cols = slice(min(max(w.cols.start, pc.start), pc.stop), max(min(w.cols.stop, pc.stop),
                                                                    pc.start))
        return _Window(rows, cols, self.cv.coord[cols][None, :], self.cv.coord[rows][:, None])


def _paint_gallbladder(cv: _Canvas, anat: _Anatomy, t: float) -> None:
    gb = anat.organ["gallbladder"]
    s = _cap(t, *gb["range"])
    if not gb["present"] or s <= 0.05:
        return
    win = cv.around(gb["x"], gb["y"], max(gb["rx"], gb["ry"]) + 3.0)
    sdf = _blob_sdf(win.x, win.y, gb["x"], gb["y"], gb["rx"] * s, gb["ry"] * s, gb["angle"])
    cv.paint(win, sdf, cv.value(win, anat.hu["gallbladder"], "fluid"), "gallbladder")


def _paint_spleen(cv: _Canvas, anat: _Anatomy, t: float, cavity: np.ndarray) -> None:
    sp = anat.organ["spleen"]
    s = _cap(t, *sp["range"])
    if s <= 0.05:
        return
    rx, ry = sp["rx"] * s, sp["ry"] * s
    win = cv.around(sp["x"], sp["y"], 1.3 * rx + 4.0)
    sdf = _blob_sdf(win.x, win.y, sp["x"], sp["y"], rx, ry, sp["angle"], sp["shape"])
    # The hilum side is concave: cut by a disc on the antero-medial side.
    hx = sp["x"] - 1.3 * ry * math.sin(-sp["angle"])
    hy = sp["y"] - 1.3 * ry * math.cos(sp["angle"])
    sdf = np.maximum(sdf, -_circle_sdf(win.x, win.y, hx, hy, 0.55 * rx))
    sdf = np.maximum(sdf, cavity[win.rows, win.cols] + 1.5)
    cv.paint(win, sdf, cv.value(win, anat.hu["spleen"], "spleen"), "spleen", blur_mm=0.6)


def _paint_kidneys(cv: _Canvas, anat: _Anatomy, t: float) -> None:
    hu = anat.hu
    for k in anat.organ["kidneys"]:
        s = _cap(t, *k["range"])
        if s <= 0.05:
            continue
        rx, ry = k["rx"] * s, k["ry"] * s
        win = cv.around(k["x"], k["y"], 1.2 * rx + 14.0)
        x, y = win.x, win.y
        cv.paint(win, _blob_sdf(x, y, k["x"], k["y"], rx + 9.0, ry + 7.0, k["angle"]),
                 cv.value(win, hu["visceral_fat"], "fat"), "visceral_fat")
        outer = _blob_sdf(x, y, k["x"], k["y"], rx, ry, k["angle"], k["shape"])
        cv.paint(win, outer, cv.value(win, hu["kidney_cortex"], "kidney"), "kidney_cortex")
        hilum = np.array([-k["side"], -0.8]) / math.hypot(1.0, 0.8)
        for j in range(6):
            ang = k["pyramids"] + j * 2 * np.pi / 6
            direction = np.array([math.cos(ang), math.sin(ang)])
            if direction @ hilum > 0.6:
                continue
            px = k["x"] + 0.5 * rx * direction[0]
            py = k["y"] + 0.5 * ry * direction[1]
            pr = max(0.0, min(rx, ry) * 0.5 - k["cortex"] * 0.3)
            cv.paint(win, np.maximum(_circle_sdf(x, y, px, py, pr), outer + k["cortex"]),
                     cv.value(win, hu["kidney_medulla"], "kidney"), "kidney_medulla")
        mid = _cap(t, k["range"][0] + 0.15, k["range"][1] - 0.15)
        if mid > 0.05:
            sx = k["x"] + 0.75 * rx * hilum[0]
            sy = k["y"] + 0.75 * ry * hilum[1]
            sinus = _blob_sdf(x, y, sx, sy, 0.5 * rx * mid, 0.45 * ry * mid, k["angle"])
            cv.paint(win, sinus, cv.value(win, hu["visceral_fat"], "fat"), "renal_sinus")
            pelvis = _blob_sdf(x, y, sx, sy, 0.28 * rx * mid, 0.22 * ry * mid, k["angle"])
            cv.paint(win, pelvis, cv.value(win, hu["renal_pelvis"], "fluid"), "renal_sinus")


def _paint_vessels(cv: _Canvas, anat: _Anatomy, z: float) -> None:
    org, hu = anat.organ, anat.hu
    t = z / ABDOMEN_LENGTH_MM
    ao = org["aorta"]
    r_ao = ao["r"] * (1.0 - 0.1 * t)
    win = cv.around(ao["x"], ao["y"], r_ao + 3.0)
    cv.paint(win, _circle_sdf(win.x, win.y, ao["x"], ao["y"], r_ao),
             cv.value(win, hu["aorta"], "blood"), "aorta")
    for x, y, zc, r, height in anat.calcifications:
        if abs(z - zc) < height / 2:
            w = cv.around(x, y, r + 2.0)
            cv.paint(w, _circle_sdf(w.x, w.y, x, y, r), hu["calcification"], "calcification",
                     blur_mm=0.3)
    ivc = org["ivc"]
    win = cv.around(ivc["x"], ivc["y"], ivc["rx"] + 3.0)
    cv.paint(win, _blob_sdf(win.x, win.y, ivc["x"], ivc["y"], ivc["rx"], ivc["ry"],
                            ivc["angle"]), cv.value(win, hu["ivc"], "blood"), "ivc")
    sma = org["sma"]
    if t >= sma["start"]:
        win = cv.around(sma["x"], sma["y"], sma["r"] + 3.0)
        cv.paint(win, _circle_sdf(win.x, win.y, sma["x"], sma["y"], sma["r"]),
                 cv.value(win, hu["aorta"], "blood"), "vessel")


def _paint_pancreas(cv: _Canvas, anat: _Anatomy, z: float) -> None:
    hu = anat.hu
    _paint_tube(cv, anat.organ["pancreas"], z, lambda w, d, _y: cv.paint(
        w, d, cv.value(w, hu["pancreas"], "pancreas"), "pancreas"))
    _paint_tube(cv, anat.organ["splenic_vein"], z, lambda w, d, _y: cv.paint(
        w, d, cv.value(w, hu["portal"], "blood"), "vessel"))


def _capsules_sdf(x, y, segments) -> np.ndarray:
    """Union of 2-D capsules: segments is a list of ((x0, y0), (x1, y1), half_thickness_mm)."""
    out = None
    for p0, p1, half in segments:
        d, _ = _segment_distance(x, y, 0.0, np.array([p0[0], p0[1], 0.0]),
                                 np.array([p1[0], p1[1], 0.0]))
        out = d - half if out is None else np.minimum(out, d - half)
    return out


def _paint_crura(cv: _Canvas, anat: _Anatomy, t: float) -> None:
    """The diaphragmatic crura: muscle bands from the vertebral body around the aorta."""
    sp = anat.organ["spine"]
    x0, y_vb, rx, ry = sp["x"], sp["y_vb"], sp["rx"], sp["ry"]
    hu = anat.hu
    ao = anat.organ["aorta"]
    crus = 1.0 - _smoothstep((t - 0.35) / 0.3)
    if crus > 0.0:
        win = cv.window(x0 - rx - 10.0, x0 + rx + 10.0, ao["y"] - ao["r"] - 12.0, y_vb + ry)
        segments = []
        for side, thick in ((-1.0, 4.5), (1.0, 3.5)):
            base = (x0 + side * 0.8 * rx, y_vb)
            beside = (ao["x"] + side * (ao["r"] + 4.0), ao["y"] + 0.3 * ao["r"])
            front = (ao["x"] + side * 2.0, ao["y"] - ao["r"] - 5.0)
            segments += [(base, beside, thick * crus), (beside, front, 0.8 * thick * crus)]
        cv.paint(win, _capsules_sdf(win.x, win.y, segments), cv.value(win, hu["muscle"], "muscle"),
                 "muscle")


def _paint_spine(cv: _Canvas, anat: _Anatomy, z: float) -> None:
    """Psoas, vertebral body or disc, pedicles, laminae, processes and the spinal canal."""
    sp, hu = anat.organ["spine"], anat.hu
    t = z / ABDOMEN_LENGTH_MM
    phase = (z + sp["phase"]) % sp["period"]
    # disc weight: 1 inside the disc, 0 in the vertebral body, 1.5 mm endplate transitions
    disc = float(_smoothstep((phase + 1.5) / 3.0) * _smoothstep((sp["disc"] + 1.5 - phase) / 3.0))
    # the transverse processes sit at mid-height of the vertebra
    mid = float(_smoothstep(1.5 - abs(phase - 0.6 * sp["period"]) / (0.15 * sp["period"])))
    x0, y_vb, rx, ry = sp["x"], sp["y_vb"], sp["rx"], sp["ry"]
    yc, canal_x, canal_y = sp["y_canal"], sp["canal_x"], sp["canal_y"]
    ps = anat.organ["psoas"]
    if t > ps["start"]:
        r = ps["r"] * min(1.0, (t - ps["start"]) / 0.45)
        for side in (-1.0, 1.0):
            px = x0 + side * (rx + 0.7 * r)
            win = cv.around(px, y_vb, r + 3.0)
            cv.paint(win, _blob_sdf(win.x, win.y, px, y_vb + 0.1 * r, 0.9 * r, r, 0.0),
                     cv.value(win, hu["muscle"], "muscle"), "muscle")
    win = cv.window(x0 - canal_x - 45.0, x0 + canal_x + 45.0, y_vb - ry - 4.0, sp["y_tip"] + 4.0)
    x, y = win.x, win.y
    arch_w = 1.0 - 0.4 * disc
    lamina_end = (x0, yc + canal_y + 3.0)
    # spinous processes slope down: the cut shows all of one in part of each vertebra only
    reach = 0.5 + 0.5 * float(_smoothstep(1.0 - abs(phase - 0.3 * sp["period"])
                                          / (0.3 * sp["period"])))
    tip = (x0, lamina_end[1] + reach * (sp["y_tip"] - 4.0 - lamina_end[1]))
    segments = [(lamina_end, tip, 3.0 * arch_w)]
    for side in (-1.0, 1.0):
        pedicle = (x0 + side * 0.55 * rx, y_vb + 0.6 * ry)
        facet = (x0 + side * (canal_x + 3.0), yc + 0.2 * canal_y)
        segments += [(pedicle, facet, 4.5 * arch_w), (facet, lamina_end, 3.5 * arch_w)]
        if mid > 0.05:
            # a transverse process enters the cut from its base outwards as the slice moves
            tip = (facet[0] + side * (8.0 + 24.0 * mid), yc + 2.0)
            segments.append((facet, tip, 2.0 + 2.0 * mid))
    arch = _capsules_sdf(x, y, segments)
    cv.paint(win, arch, hu["arch"] + cv.texture(win, "arch"), "posterior_arch", blur_mm=0.3)
    body = _blob_sdf(x, y, x0, y_vb, rx, ry, 0.0, sp["shape"])
    # The posterior wall of a vertebral body is flat.
    body = np.maximum(body, y - (y_vb + 0.82 * ry))
    rim = (1.0 - disc) * hu["cortex"] + disc * hu["disc"]
    cv.paint(win, body, rim + cv.texture(win, "disc"),
             "intervertebral_disc" if disc > 0.5 else "vertebral_cortex", blur_mm=0.3)
    inner = body + sp["cortex"] * (1.0 - disc)
    core = (1.0 - disc) * (hu["bone"] + cv.texture(win, "bone")) + disc * (
        hu["disc"] + cv.texture(win, "disc"))
    cv.paint(win, inner, core, "intervertebral_disc" if disc > 0.5 else "vertebral_body",
             blur_mm=0.3)
    # rounded-triangle canal with its apex posterior
    canal = _blob_sdf(x, y, x0, yc, canal_x, canal_y, 0.0, np.array([[0, 0], [0, 0], [0, -0.12]]))
    cv.paint(win, canal, cv.value(win, hu["csf"], "csf"), "spinal_canal")


def _paint_lungs(cv: _Canvas, anat: _Anatomy, t: float, cavity: np.ndarray) -> None:
    """Lung bases in the posterior costophrenic recesses of the top slices."""
    extent = 1.0 - t / 0.1
    if extent <= 0.0:
        return
    body = anat.body
    for side in (-1.0, 1.0):
        theta = np.pi / 2 - side * 0.9
        _, _, _, r_cav, _ = _body_radii(body, np.array(theta), t)
        cx = body["cx"] + float(r_cav) * math.cos(theta)
        cy = body["cy"] + float(r_cav) * math.sin(theta)
        rx, ry = 60.0 * math.sqrt(extent), 18.0 * math.sqrt(extent)
        win = cv.around(cx, cy, rx + 3.0)
        sdf = _blob_sdf(win.x, win.y, cx, cy, rx, ry, theta + np.pi / 2)
        sdf = np.maximum(sdf, cavity[win.rows, win.cols] + 1.0)
        cv.paint(win, sdf, cv.value(win, anat.hu["lung"], "lung"), "lung")


def _render(anat: _Anatomy, z_mm: float, size_px: int, pixel_mm: float,
            with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    t = z_mm / ABDOMEN_LENGTH_MM
    cv = _Canvas(anat, z_mm, size_px, pixel_mm, with_labels)
    cavity = _paint_body(cv, anat, t)
    _paint_ribs(cv, anat, z_mm)
    _paint_crura(cv, anat, t)
    _paint_bowel(cv, anat, z_mm, cavity)
    _paint_stomach(cv, anat, t, cavity)
    _paint_pancreas(cv, anat, z_mm)
    _paint_liver(cv, anat, z_mm, cavity)
    _paint_gallbladder(cv, anat, t)
    _paint_spleen(cv, anat, t, cavity)
    _paint_kidneys(cv, anat, t)
    _paint_vessels(cv, anat, z_mm)
    _paint_spine(cv, anat, z_mm)
    _paint_lungs(cv, anat, t, cavity)
    return cv.hu.astype(np.float32), cv.labels


# --------------------------------------------------------------------------------------------
# Public API.


def _check_args(patient_seed: int, size_px: int, pixel_size_mm: float, slice_spacing_mm: float,
                lesion_contrast_hu: tuple[float, float],
                lesion_diameter_mm: tuple[float, float]) -> None:
    if int(patient_seed) != patient_seed or patient_seed < 0:
        raise ValueError(f"patient_seed={patient_seed!r} must be a non-negative integer.")
    if size_px < 8:
        raise ValueError(f"size_px={size_px} is too small; use at least 8 (tests use 64).")
    if not pixel_size_mm > 0 or size_px * pixel_size_mm < MIN_FOV_MM:
        raise ValueError(
            f"pixel_size_mm={pixel_size_mm} with size_px={size_px} gives a field of view of "
            f"{size_px * pixel_size_mm:.1f} mm; the virtual patients are up to ~345 mm wide, so "
            f"use a field of view of at least {MIN_FOV_MM:.0f} mm, e.g. "
            f"pixel_size_mm=default_pixel_size_mm(size_px) = {default_pixel_size_mm(size_px):.4g}.")
    if not slice_spacing_mm > 0:
        raise ValueError(f"slice_spacing_mm={slice_spacing_mm} must be positive (mm).")
    lo, hi = lesion_contrast_hu
    if not -200.0 <= lo <= hi <= 200.0:
        raise ValueError(f"lesion_contrast_hu={lesion_contrast_hu} must be an increasing (low, "
                         "high) pair in [-200, 200] HU relative to the liver, e.g. (-40, -10).")
    lo, hi = lesion_diameter_mm
    if not 0.5 <= lo <= hi <= 30.0:
        raise ValueError(f"lesion_diameter_mm={lesion_diameter_mm} must be an increasing (low, "
                         "high) pair in [0.5, 30] mm, e.g. (2, 10).")


def _organ_centres(labels: np.ndarray) -> dict[str, tuple[int, int]]:
    from scipy import ndimage

    centres = {}
    for idx in np.unique(labels):
        if idx == 0:
            continue
        mask = labels == idx
        rows, cols = np.nonzero(mask)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        depth = ndimage.distance_transform_edt(np.pad(mask[r0:r1, c0:c1], 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(depth), depth.shape)
        centres[LABEL_NAMES[idx]] = (int(r0 + r), int(c0 + c))
    return centres


def _slice_meta(anat: _Anatomy, seed: int, index: int, z_mm: float, size_px: int,
                pixel_mm: float, labels: np.ndarray) -> SliceMeta:
    half = (size_px - 1) / 2.0
    sections = []
    for i, les in enumerate(anat.lesions):
        dz = z_mm - les.centre_mm[2]
        if abs(dz) < les.radius_mm:
            rho = math.sqrt(les.radius_mm ** 2 - dz ** 2)
            sections.append(LesionSection(
                lesion_index=i, centre_px=(les.centre_mm[1] / pixel_mm + half,
                                           les.centre_mm[0] / pixel_mm + half),
                radius_px=rho / pixel_mm, radius_mm=rho, contrast_hu=les.contrast_hu))
    return SliceMeta(seed, index, z_mm, pixel_mm, labels, _organ_centres(labels),
                     tuple(sections))


def liver_lesions(patient_seed: int, *, lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                  lesion_diameter_mm: tuple[float, float] = (2.0, 10.0)) -> tuple[Lesion, ...]:
    """All liver lesions of a virtual patient (centres and radii in mm, contrast in HU).

    Slice ``i`` (at ``z = i * slice_spacing_mm``) cuts lesion L when
    ``abs(z - L.centre_mm[2]) < L.radius_mm``.
    """
    _check_args(patient_seed, 64, FOV_MM / 64, SLICE_SPACING_MM, lesion_contrast_hu,
                lesion_diameter_mm)
    return _make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm).lesions


def abdomen_slice(patient_seed: int, slice_index: int, size_px: int, pixel_size_mm: float, *,
                  slice_spacing_mm: float = SLICE_SPACING_MM,
                  lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                  lesion_diameter_mm: tuple[float, float] = (2.0, 10.0),
                  return_meta: bool = False) -> np.ndarray | tuple[np.ndarray, SliceMeta]:
    """One axial slice of virtual patient ``patient_seed``: [size_px, size_px] float32 in HU.

    The slice lies at ``z = slice_index * slice_spacing_mm`` (mm, head to feet); the anatomy is
    designed for z in [0, ABDOMEN_LENGTH_MM] (liver dome to below the kidneys) and continues
    smoothly (mostly bowel) beyond it. Lesion contrasts (HU relative to liver) and diameters (mm)
    are drawn uniformly from the given ranges; changing them leaves the rest of the patient
    unchanged. With ``return_meta`` also returns a ``SliceMeta`` (labels, organ centres, lesions).
    """
    _check_args(patient_seed, size_px, pixel_size_mm, slice_spacing_mm, lesion_contrast_hu,
                lesion_diameter_mm)
    if slice_index < 0:
        raise ValueError(f"slice_index={slice_index} must be >= 0 (slice 0 is the liver dome).")
    anat = _make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm)
    z_mm = slice_index * slice_spacing_mm
    image, labels = _render(anat, z_mm, size_px, pixel_size_mm, return_meta)
    if not return_meta:
        return image
    return image, _slice_meta(anat, patient_seed, slice_index, z_mm, size_px, pixel_size_mm,
                              labels)


def virtual_patient(patient_seed: int, num_slices: int, size_px: int, pixel_size_mm: float, *,
                    slice_spacing_mm: float = SLICE_SPACING_MM,
                    lesion_contrast_hu: tuple[float, float] = (-40.0, -10.0),
                    lesion_diameter_mm: tuple[float, float] = (2.0, 10.0),
                    return_meta: bool = False,
                    slice_indices: Sequence[int] | None = None,
                    ) -> np.ndarray | tuple[np.ndarray, list[SliceMeta]]:
    """Slices 0..num_slices-1 of one virtual patient: [S, size_px, size_px] float32 in HU.

    Identical to stacking ``abdomen_slice(patient_seed, i, ...)``; the patient is built once.
    ``slice_indices`` (each in 0..num_slices-1) renders only those slices, in that order.
    """
    _check_args(patient_seed, size_px, pixel_size_mm, slice_spacing_mm, lesion_contrast_hu,
                lesion_diameter_mm)
    if num_slices < 1:
        raise ValueError(f"num_slices={num_slices} must be at least 1.")
    anat = _make_anatomy(patient_seed, lesion_contrast_hu, lesion_diameter_mm)
    indices = range(num_slices) if slice_indices is None else [int(i) for i in slice_indices]
    if any(not 0 <= i < num_slices for i in indices):
        raise ValueError(f"slice_indices {list(indices)} must lie in 0..{num_slices - 1}.")
    images, metas = [], []
    for i in indices:
        z_mm = i * slice_spacing_mm
        image, labels = _render(anat, z_mm, size_px, pixel_size_mm, return_meta)
        images.append(image)
        if return_meta:
            metas.append(_slice_meta(anat, patient_seed, i, z_mm, size_px, pixel_size_mm,
                                     labels))
    volume = np.stack(images)
    return (volume, metas) if return_meta else volume


def save_preview_png(path: str | Path, images: np.ndarray | Sequence[np.ndarray], *,
                     window_hu: tuple[float, float] = LIVER_WINDOW_HU,
                     titles: Sequence[str] | None = None, columns: int = 4) -> None:
    """Save HU images ([H, W], [N, H, W] or a list of [H, W]) as a PNG grid in a CT window.

    The default window is the liver window [-160, 240] HU used by the LDCT Grand Challenge.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    images = [np.asarray(im) for im in images]
    if not images or any(im.ndim != 2 for im in images):
        raise ValueError(f"images must be [H, W], [N, H, W] or a list of [H, W] arrays; got "
                         f"shapes {[im.shape for im in images]}.")
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    fig = Figure(figsize=(4.0 * cols, 4.0 * rows), dpi=max(100, images[0].shape[0] // 4))
    FigureCanvasAgg(fig)
    for i, im in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(im, cmap="gray", vmin=window_hu[0], vmax=window_hu[1],
                  interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    fig.savefig(Path(path))
