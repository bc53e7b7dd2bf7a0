"""One virtual patient drawn from a seed: all parameters in mm, before any slice is rendered.

Organ layout (liver, gallbladder, spleen, stomach, kidneys, pancreas, spine), HU values, vessel
trees, bowel loops, ribs, calcifications and liver lesions, from independent random streams, and
their assembly into an ``Anatomy`` (``make_anatomy``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from consensus_jax.phantoms.abdomen.body import (
    ABDOMEN_LENGTH_MM,
    body_dims,
    cavity_sdf,
    inner_dims,
    make_body,
)
from consensus_jax.phantoms.abdomen.shapes import Tube, blob_sdf, cap, circle_sdf
from consensus_jax.phantoms.abdomen.texture import make_texture_modes


@dataclasses.dataclass(frozen=True)
class Lesion:
    """A spherical low-contrast liver lesion of one virtual patient.

    centre_mm: (x, y, z) in mm (x: image columns, y: image rows, z: slice position).
    contrast_hu: HU relative to the surrounding liver (negative: hypodense).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    contrast_hu: float


@dataclasses.dataclass(frozen=True, eq=False)
class _Bowel:
    tube: Tube
    wall_mm: float
    content: str
    gas_level: float


@dataclasses.dataclass(frozen=True, eq=False)
class Anatomy:
    body: dict
    hu: dict
    organ: dict
    ribs: tuple
    vessel_trunks: Tube
    liver_vessels: Tube
    mesenteric: Tube
    bowel: tuple
    calcifications: tuple
    texture_modes: tuple
    lesions: tuple[Lesion, ...]


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
    ai, bi, bp = inner_dims(body)
    cx, cy = body["cx"], body["cy"]
    _, _, b_post = body_dims(body, 0.5)
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
    organ["pancreas"] = Tube(
        a=np.array([[cx + 0.45 * ai, cy + 0.15 * bp, 0.36 * ABDOMEN_LENGTH_MM],
                    [ao["x"] - 5.0, ao["y"] - ao["r"] - 18.0, 0.44 * ABDOMEN_LENGTH_MM]]),
        b=np.array([[ao["x"] - 5.0, ao["y"] - ao["r"] - 18.0, 0.44 * ABDOMEN_LENGTH_MM],
                    [cx - 0.2 * ai, ao["y"] - 10.0, 0.55 * ABDOMEN_LENGTH_MM]]),
        radius=np.array([u(8.0, 11.0), u(11.0, 14.0)]))
    organ["splenic_vein"] = Tube(
        a=organ["pancreas"].a + np.array([0.0, 10.0, 0.0]),
        b=organ["pancreas"].b + np.array([0.0, 10.0, 0.0]), radius=np.array([3.5, 4.5]))
    return organ


def liver_parts(body: dict, organ: dict, t: float) -> tuple[tuple, tuple]:
    """The two ellipses (cx, cy, rx, ry, angle) of the right and left liver lobes at t."""
    lv = organ["liver"]
    cx1, cy1, rx1, ry1, ang1 = lv["e1"]
    s1 = cap(t, *lv["e1_range"])
    ai = inner_dims(body)[0]
    # The inferior tip of the right lobe lies lateral and anterior.
    e1 = (cx1 - lv["drift"] * ai * t, cy1 - 0.1 * ry1 * t, rx1 * s1, ry1 * s1, ang1)
    cx2, cy2, rx2, ry2, ang2 = lv["e2"]
    s2 = cap(t, *lv["e2_range"])
    return e1, (cx2, cy2, rx2 * s2, ry2 * s2, ang2)


def _occluder_sdf(organ: dict, x, y, t):
    """Structures painted over the liver (IVC, kidneys in their fat, gallbladder); t may vary."""
    ivc = organ["ivc"]
    out = blob_sdf(x, y, ivc["x"], ivc["y"], ivc["rx"], ivc["ry"], ivc["angle"])
    parts = [(k, (9.0, 7.0)) for k in organ["kidneys"]]
    if organ["gallbladder"]["present"]:
        parts.append((organ["gallbladder"], (0.0, 0.0)))
    for part, (pad_x, pad_y) in parts:
        s = cap(t, *part["range"])
        d = blob_sdf(x, y, part["x"], part["y"], part["rx"] * s + pad_x, part["ry"] * s + pad_y,
                     part["angle"])
        out = np.minimum(out, np.where(s > 0.05, d, np.inf))
    return out


def liver_sdf(body: dict, organ: dict, x, y, t: float, cavity=None):
    """The liver: two lobes inside the cavity, clear of the spine and of what lies over it."""
    lv = organ["liver"]
    e1, e2 = liver_parts(body, organ, t)
    d1 = blob_sdf(x, y, *e1, lv["e1_shape"])
    d2 = blob_sdf(x, y, *e2, lv["e2_shape"])
    sp = organ["spine"]
    notch = circle_sdf(x, y, sp["x"], sp["y_vb"], lv["notch"])
    if cavity is None:
        cavity = cavity_sdf(body, x, y, t)
    liver = np.maximum(np.maximum(np.minimum(d1, d2), -notch), cavity + 1.5)
    return np.maximum(liver, 1.0 - _occluder_sdf(organ, x, y, t))


def _grow_tree(rng, roots, accept, max_depth: int, scale_mm: float = 1.0) -> Tube:
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
        return Tube(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    a, b, r = zip(*segments, strict=True)
    return Tube(np.array(a), np.array(b), np.array(r))


def _deep_liver_point(rng, body, organ, x, y, t) -> np.ndarray:
    """A point well inside the liver near (x, y, t): roots of the intrahepatic vessel trees."""
    cand = np.stack([rng.normal(x, 20.0, 256), rng.normal(y, 20.0, 256),
                     np.clip(rng.normal(t, 0.05, 256), 0.0, 0.8)], axis=1)
    depth = liver_sdf(body, organ, cand[:, 0], cand[:, 1], cand[:, 2])
    score = depth + 0.3 * np.hypot(cand[:, 0] - x, cand[:, 1] - y)
    i = int(np.argmin(score))
    return np.array([cand[i, 0], cand[i, 1], cand[i, 2] * ABDOMEN_LENGTH_MM])


def _make_vessels(rng, body, organ) -> tuple[Tube, Tube, Tube]:
    """Portal and hepatic trees in the liver, their trunks outside it, and mesenteric vessels."""
    ai, bi, _ = inner_dims(body)
    length = ABDOMEN_LENGTH_MM
    porta = _deep_liver_point(rng, body, organ, body["cx"] - 0.25 * ai, body["cy"] - 0.05 * bi,
                              0.36)
    confluence = np.array([organ["pancreas"].b[0][0], organ["pancreas"].b[0][1] + 8.0,
                           0.46 * length])
    ivc = organ["ivc"]
    ivc_top = np.array([ivc["x"], ivc["y"], 0.05 * length])
    hepatic = _deep_liver_point(rng, body, organ, ivc["x"] - 25.0, ivc["y"] - 20.0, 0.08)
    trunks = Tube(a=np.stack([confluence, ivc_top]), b=np.stack([porta, hepatic]),
                  radius=np.array([rng.uniform(6.0, 7.5), rng.uniform(5.0, 6.5)]))
    roots = [(porta, d, rng.uniform(4.5, 5.5)) for d in
             ((-1.0, 0.1, -0.3), (-0.6, -0.6, -0.2), (-0.7, 0.3, 0.4), (0.6, -0.5, -0.4))]
    roots += [(hepatic, d, rng.uniform(4.0, 5.5)) for d in
              ((-1.0, -0.1, 0.6), (-0.3, -1.0, 0.5), (0.6, -0.9, 0.4))]

    def in_liver(p, r):
        return liver_sdf(body, organ, p[:, 0], p[:, 1], p[:, 2] / length) < -(r + 1.5)

    liver = _grow_tree(rng, roots, in_liver, max_depth=4)
    sma = organ["sma"]
    sp = organ["spine"]
    lo = np.array([body["cx"] - 0.6 * ai, body["cy"] - 0.8 * bi, sma["start"] * length])
    hi = np.array([body["cx"] + 0.6 * ai, sp["y_vb"] - sp["ry"] - 8.0, 1.5 * length])

    def in_mesentery(p, r):
        inside = np.all((p > lo) & (p < hi), axis=1)
        return inside & (cavity_sdf(body, p[:, 0], p[:, 1], p[:, 2] / length) < -(r + 8.0))

    start = np.array([sma["x"], sma["y"], sma["start"] * length])
    mesentery = _grow_tree(rng, [(start, (0.0, -0.5, 1.0), sma["r"])], in_mesentery,
                           max_depth=5, scale_mm=1.3)
    return trunks, liver, mesentery


def _random_walk_tube(rng, start, box_lo, box_hi, steps, step_mm, radius) -> Tube:
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
    return Tube(a=p[:-1], b=p[1:], radius=np.full(len(p) - 1, radius))


def _make_bowel(rng, body, organ) -> tuple[_Bowel, ...]:
    ai, bi, _ = inner_dims(body)
    cx, cy = body["cx"], body["cy"]
    length = ABDOMEN_LENGTH_MM
    sp = organ["spine"]
    loops = []
    lo = np.array([cx - 0.62 * ai, cy - 0.85 * bi, 0.45 * length])
    hi = np.array([cx + 0.62 * ai, sp["y_vb"] - sp["ry"] - 25.0, 1.4 * length])
    if hi[1] <= lo[1]:
        # A slim body whose spine sits close to the front wall (about 1 patient in 20): the
        # 25 mm margin leaves no room, so the loops fill the front half of the gap instead.
        # Every other patient draws exactly the numbers it drew before.
        hi[1] = 0.5 * (lo[1] + sp["y_vb"] - sp["ry"])
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
        return Tube(a=p[:-1], b=p[1:], radius=np.full(len(p) - 1, radius))

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
        ok = liver_sdf(body, organ, x, y, t) < -(radius + 5.0)
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


def make_anatomy(seed: int, contrast_hu: tuple[float, float],
                 diameter_mm: tuple[float, float]) -> Anatomy:
    # Independent streams per part, so that asking for other lesions leaves the anatomy unchanged.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    body = make_body(streams[0])
    organ = _make_organs(streams[2], body)
    trunks, vessels, mesentery = _make_vessels(streams[3], body, organ)
    return Anatomy(
        body=body, hu=_make_hu(streams[1]), organ=organ, ribs=_make_ribs(streams[5], body),
        vessel_trunks=trunks, liver_vessels=vessels, mesenteric=mesentery,
        bowel=_make_bowel(streams[4], body, organ),
        calcifications=_make_calcifications(streams[6], organ),
        texture_modes=make_texture_modes(streams[6]),
        lesions=_make_lesions(streams[7], body, organ, contrast_hu, diameter_mm))
