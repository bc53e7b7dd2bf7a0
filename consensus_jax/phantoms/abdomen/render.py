"""Rendering one axial slice of a virtual patient: every organ painted onto a ``Canvas`` in turn."""

from __future__ import annotations

import math

import numpy as np

from consensus_jax.phantoms.abdomen.anatomy import Anatomy, liver_parts, liver_sdf
from consensus_jax.phantoms.abdomen.body import ABDOMEN_LENGTH_MM, body_radii
from consensus_jax.phantoms.abdomen.canvas import AIR_HU, Canvas, SubCanvas, paint_tube
from consensus_jax.phantoms.abdomen.shapes import (
    blob_sdf,
    cap,
    capsules_sdf,
    circle_sdf,
    smoothstep,
    wrap,
)


def _paint_body(cv: Canvas, anat: Anatomy, t: float) -> np.ndarray:
    body, hu = anat.body, anat.hu
    w = cv.full
    dx, dy = w.x - body["cx"], w.y - body["cy"]
    r, th = np.hypot(dx, dy), np.arctan2(dy, dx)
    radius, r_skin, r_fat, r_cav, g = body_radii(body, th, t)
    norm = np.sqrt(1.0 + g * g)
    cv.paint(w, (r - radius) / norm, cv.value(w, hu["skin"], "skin"), "skin")
    cv.paint(w, (r - r_skin) / norm, cv.value(w, hu["fat"], "fat"), "subcutaneous_fat")
    cv.paint(w, (r - r_fat) / norm, cv.value(w, hu["muscle"], "muscle"), "muscle")
    cavity = (r - r_cav) / norm
    cv.paint(w, cavity, cv.value(w, hu["visceral_fat"], "fat"), "visceral_fat")
    cv.polar = (r, th, r_fat, r_cav)
    return cavity


def _paint_ribs(cv: Canvas, anat: Anatomy, z: float) -> None:
    body, hu = anat.body, anat.hu
    r, th, r_fat, r_cav = cv.polar
    t = z / ABDOMEN_LENGTH_MM
    for rib in anat.ribs:
        phi = rib["phi0"] + (z - rib["z0"]) / rib["slope"]
        end = max(rib["bony_end"], rib["cartilage_end"])
        if not rib["phi0"] - 0.3 <= phi <= end + 0.3:
            continue
        theta = np.pi / 2 - rib["side"] * phi
        _, _, rf, rc, _ = body_radii(body, np.array(theta), t)
        depth = float(rf - rc)
        radial = float(rf) - min(0.5 * depth, rib["thick"] / 2 + 3.0)
        half_len = min(rib["height"] * radial / (2.0 * rib["slope"]), 22.0)
        half_thick = rib["thick"] / 2.0
        cx = body["cx"] + radial * math.cos(theta)
        cy = body["cy"] + radial * math.sin(theta)
        win = cv.around(cx, cy, half_len + 6.0)
        rr = r[win.rows, win.cols]
        arc = wrap(th[win.rows, win.cols] - theta) * radial
        # Along the arc the cut passes through other parts of the rib: phi at each pixel decides
        # where the rib starts (near the spine), turns into cartilage and ends.
        phi_px = phi - rib["side"] * arc / radial
        sdf = np.maximum(blob_sdf(arc, rr, 0.0, radial, half_len, half_thick),
                         (rib["phi0"] - phi_px) * radial)
        if rib["cartilage_end"] > rib["bony_end"]:
            cartilage = np.maximum(np.maximum(sdf, (phi_px - rib["cartilage_end"]) * radial),
                                   (rib["bony_end"] - phi_px) * radial)
            cv.paint(win, cartilage, cv.value(win, hu["cartilage"], "disc"), "costal_cartilage")
        bone_cut = (phi_px - rib["bony_end"]) * radial
        inner = blob_sdf(arc, rr, 0.0, radial, half_len - rib["cortex"],
                         half_thick - rib["cortex"])
        cv.paint(win, np.maximum(sdf, bone_cut), hu["rib_cortex"], "rib_cortex", blur_mm=0.2)
        cv.paint(win, np.maximum(np.maximum(inner, bone_cut), sdf + rib["cortex"]),
                 cv.value(win, hu["rib_marrow"], "bone"), "rib_marrow", blur_mm=0.2)


def _paint_bowel(cv: Canvas, anat: Anatomy, z: float, cavity: np.ndarray) -> None:
    hu = anat.hu
    paint_tube(cv, anat.mesenteric, z, lambda w, d, _y: cv.paint(
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
                bubble = smoothstep((f - 0.9) / 0.5)
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

        paint_tube(cv, loop.tube, z, draw)


def _paint_stomach(cv: Canvas, anat: Anatomy, t: float, cavity: np.ndarray) -> None:
    st, hu = anat.organ["stomach"], anat.hu
    s = cap(t, *st["range"])
    if s <= 0.05:
        return
    rx, ry = st["rx"] * s, st["ry"] * s
    cy = st["y"] + 0.25 * st["ry"] * (0.2 - t)
    win = cv.around(st["x"], cy, 1.3 * max(rx, ry) + 4.0)
    cav = cavity[win.rows, win.cols] + 2.0
    outer = np.maximum(blob_sdf(win.x, win.y, st["x"], cy, rx, ry, st["angle"], st["shape"]),
                       cav)
    cv.paint(win, outer, cv.value(win, hu["stomach_wall"], "muscle"), "stomach_wall")
    lumen = outer + st["wall"]
    base = hu["oral_contrast"] if hu["oral"] else hu["stomach_content"]
    cv.paint(win, lumen, cv.value(win, base, "gut"), "stomach_content")
    level = cy + st["gas"] * ry
    cv.paint(win, np.maximum(lumen, win.y - level), AIR_HU, "gas")


def _paint_liver(cv: Canvas, anat: Anatomy, z: float, cavity: np.ndarray) -> None:
    lv, hu = anat.organ["liver"], anat.hu
    t = z / ABDOMEN_LENGTH_MM
    if max(cap(t, *lv["e1_range"]), cap(t, *lv["e2_range"])) <= 0.0:
        return
    boxes = []
    for cx, cy, rx, ry, _ in liver_parts(anat.body, anat.organ, t):
        if rx > 0.0:
            reach = 1.15 * max(rx, ry)
            boxes.append((cx - reach, cx + reach, cy - reach, cy + reach))
    box = np.array(boxes)
    win = cv.window(box[:, 0].min(), box[:, 1].max(), box[:, 2].min(), box[:, 3].max())
    sdf = liver_sdf(anat.body, anat.organ, win.x, win.y, t, cavity[win.rows, win.cols])
    liver_value = cv.value(win, hu["liver"], "liver")
    cv.paint(win, sdf, liver_value, "liver", blur_mm=0.6)

    def vessel(w, d, _near_y):
        inside = sdf[w.rows.start - win.rows.start:w.rows.stop - win.rows.start,
                     w.cols.start - win.cols.start:w.cols.stop - win.cols.start]
        cv.paint(w, np.maximum(d, inside + 0.5), cv.value(w, hu["portal"], "blood"),
                 "liver_vessel", blur_mm=0.5)

    paint_tube(SubCanvas(cv, win), anat.liver_vessels, z, vessel, separate=True)
    paint_tube(cv, anat.vessel_trunks, z,
               lambda w, d, _y: cv.paint(w, d, cv.value(w, hu["portal"], "blood"), "vessel"))
    for les in anat.lesions:
        dz = z - les.centre_mm[2]
        if abs(dz) >= les.radius_mm:
            continue
        rho = math.sqrt(les.radius_mm ** 2 - dz ** 2)
        lw = cv.around(les.centre_mm[0], les.centre_mm[1], rho + 3.0)
        d = circle_sdf(lw.x, lw.y, les.centre_mm[0], les.centre_mm[1], rho)
        value = cv.value(lw, hu["liver"] + les.contrast_hu, "liver")
        cv.paint(lw, d, value, "liver_lesion", blur_mm=0.6)


def _paint_gallbladder(cv: Canvas, anat: Anatomy, t: float) -> None:
    gb = anat.organ["gallbladder"]
    s = cap(t, *gb["range"])
    if not gb["present"] or s <= 0.05:
        return
    win = cv.around(gb["x"], gb["y"], max(gb["rx"], gb["ry"]) + 3.0)
    sdf = blob_sdf(win.x, win.y, gb["x"], gb["y"], gb["rx"] * s, gb["ry"] * s, gb["angle"])
    cv.paint(win, sdf, cv.value(win, anat.hu["gallbladder"], "fluid"), "gallbladder")


def _paint_spleen(cv: Canvas, anat: Anatomy, t: float, cavity: np.ndarray) -> None:
    sp = anat.organ["spleen"]
    s = cap(t, *sp["range"])
    if s <= 0.05:
        return
    rx, ry = sp["rx"] * s, sp["ry"] * s
    win = cv.around(sp["x"], sp["y"], 1.3 * rx + 4.0)
    sdf = blob_sdf(win.x, win.y, sp["x"], sp["y"], rx, ry, sp["angle"], sp["shape"])
    # The hilum side is concave: cut by a disc on the antero-medial side.
    hx = sp["x"] - 1.3 * ry * math.sin(-sp["angle"])
    hy = sp["y"] - 1.3 * ry * math.cos(sp["angle"])
    sdf = np.maximum(sdf, -circle_sdf(win.x, win.y, hx, hy, 0.55 * rx))
    sdf = np.maximum(sdf, cavity[win.rows, win.cols] + 1.5)
    cv.paint(win, sdf, cv.value(win, anat.hu["spleen"], "spleen"), "spleen", blur_mm=0.6)


def _paint_kidneys(cv: Canvas, anat: Anatomy, t: float) -> None:
    hu = anat.hu
    for k in anat.organ["kidneys"]:
        s = cap(t, *k["range"])
        if s <= 0.05:
            continue
        rx, ry = k["rx"] * s, k["ry"] * s
        win = cv.around(k["x"], k["y"], 1.2 * rx + 14.0)
        x, y = win.x, win.y
        cv.paint(win, blob_sdf(x, y, k["x"], k["y"], rx + 9.0, ry + 7.0, k["angle"]),
                 cv.value(win, hu["visceral_fat"], "fat"), "visceral_fat")
        outer = blob_sdf(x, y, k["x"], k["y"], rx, ry, k["angle"], k["shape"])
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
            cv.paint(win, np.maximum(circle_sdf(x, y, px, py, pr), outer + k["cortex"]),
                     cv.value(win, hu["kidney_medulla"], "kidney"), "kidney_medulla")
        mid = cap(t, k["range"][0] + 0.15, k["range"][1] - 0.15)
        if mid > 0.05:
            sx = k["x"] + 0.75 * rx * hilum[0]
            sy = k["y"] + 0.75 * ry * hilum[1]
            sinus = blob_sdf(x, y, sx, sy, 0.5 * rx * mid, 0.45 * ry * mid, k["angle"])
            cv.paint(win, sinus, cv.value(win, hu["visceral_fat"], "fat"), "renal_sinus")
            pelvis = blob_sdf(x, y, sx, sy, 0.28 * rx * mid, 0.22 * ry * mid, k["angle"])
            cv.paint(win, pelvis, cv.value(win, hu["renal_pelvis"], "fluid"), "renal_sinus")


def _paint_vessels(cv: Canvas, anat: Anatomy, z: float) -> None:
    org, hu = anat.organ, anat.hu
    t = z / ABDOMEN_LENGTH_MM
    ao = org["aorta"]
    r_ao = ao["r"] * (1.0 - 0.1 * t)
    win = cv.around(ao["x"], ao["y"], r_ao + 3.0)
    cv.paint(win, circle_sdf(win.x, win.y, ao["x"], ao["y"], r_ao),
             cv.value(win, hu["aorta"], "blood"), "aorta")
    for x, y, zc, r, height in anat.calcifications:
        if abs(z - zc) < height / 2:
            w = cv.around(x, y, r + 2.0)
            cv.paint(w, circle_sdf(w.x, w.y, x, y, r), hu["calcification"], "calcification",
                     blur_mm=0.3)
    ivc = org["ivc"]
    win = cv.around(ivc["x"], ivc["y"], ivc["rx"] + 3.0)
    cv.paint(win, blob_sdf(win.x, win.y, ivc["x"], ivc["y"], ivc["rx"], ivc["ry"],
                           ivc["angle"]), cv.value(win, hu["ivc"], "blood"), "ivc")
    sma = org["sma"]
    if t >= sma["start"]:
        win = cv.around(sma["x"], sma["y"], sma["r"] + 3.0)
        cv.paint(win, circle_sdf(win.x, win.y, sma["x"], sma["y"], sma["r"]),
                 cv.value(win, hu["aorta"], "blood"), "vessel")


def _paint_pancreas(cv: Canvas, anat: Anatomy, z: float) -> None:
    hu = anat.hu
    paint_tube(cv, anat.organ["pancreas"], z, lambda w, d, _y: cv.paint(
        w, d, cv.value(w, hu["pancreas"], "pancreas"), "pancreas"))
    paint_tube(cv, anat.organ["splenic_vein"], z, lambda w, d, _y: cv.paint(
        w, d, cv.value(w, hu["portal"], "blood"), "vessel"))


def _paint_crura(cv: Canvas, anat: Anatomy, t: float) -> None:
    """The diaphragmatic crura: muscle bands from the vertebral body around the aorta."""
    sp = anat.organ["spine"]
    x0, y_vb, rx, ry = sp["x"], sp["y_vb"], sp["rx"], sp["ry"]
    hu = anat.hu
    ao = anat.organ["aorta"]
    crus = 1.0 - smoothstep((t - 0.35) / 0.3)
    if crus > 0.0:
        win = cv.window(x0 - rx - 10.0, x0 + rx + 10.0, ao["y"] - ao["r"] - 12.0, y_vb + ry)
        segments = []
        for side, thick in ((-1.0, 4.5), (1.0, 3.5)):
            base = (x0 + side * 0.8 * rx, y_vb)
            beside = (ao["x"] + side * (ao["r"] + 4.0), ao["y"] + 0.3 * ao["r"])
            front = (ao["x"] + side * 2.0, ao["y"] - ao["r"] - 5.0)
            segments += [(base, beside, thick * crus), (beside, front, 0.8 * thick * crus)]
        cv.paint(win, capsules_sdf(win.x, win.y, segments), cv.value(win, hu["muscle"], "muscle"),
                 "muscle")


def _paint_spine(cv: Canvas, anat: Anatomy, z: float) -> None:
    """Psoas, vertebral body or disc, pedicles, laminae, processes and the spinal canal."""
    sp, hu = anat.organ["spine"], anat.hu
    t = z / ABDOMEN_LENGTH_MM
    phase = (z + sp["phase"]) % sp["period"]
    # disc weight: 1 inside the disc, 0 in the vertebral body, 1.5 mm endplate transitions
    disc = float(smoothstep((phase + 1.5) / 3.0) * smoothstep((sp["disc"] + 1.5 - phase) / 3.0))
    # the transverse processes sit at mid-height of the vertebra
    mid = float(smoothstep(1.5 - abs(phase - 0.6 * sp["period"]) / (0.15 * sp["period"])))
    x0, y_vb, rx, ry = sp["x"], sp["y_vb"], sp["rx"], sp["ry"]
    yc, canal_x, canal_y = sp["y_canal"], sp["canal_x"], sp["canal_y"]
    ps = anat.organ["psoas"]
    if t > ps["start"]:
        r = ps["r"] * min(1.0, (t - ps["start"]) / 0.45)
        for side in (-1.0, 1.0):
            px = x0 + side * (rx + 0.7 * r)
            win = cv.around(px, y_vb, r + 3.0)
            cv.paint(win, blob_sdf(win.x, win.y, px, y_vb + 0.1 * r, 0.9 * r, r, 0.0),
                     cv.value(win, hu["muscle"], "muscle"), "muscle")
    win = cv.window(x0 - canal_x - 45.0, x0 + canal_x + 45.0, y_vb - ry - 4.0, sp["y_tip"] + 4.0)
    x, y = win.x, win.y
    arch_w = 1.0 - 0.4 * disc
    lamina_end = (x0, yc + canal_y + 3.0)
    # spinous processes slope down: the cut shows all of one in part of each vertebra only
    reach = 0.5 + 0.5 * float(smoothstep(1.0 - abs(phase - 0.3 * sp["period"])
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
    arch = capsules_sdf(x, y, segments)
    cv.paint(win, arch, hu["arch"] + cv.texture(win, "arch"), "posterior_arch", blur_mm=0.3)
    body = blob_sdf(x, y, x0, y_vb, rx, ry, 0.0, sp["shape"])
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
    canal = blob_sdf(x, y, x0, yc, canal_x, canal_y, 0.0, np.array([[0, 0], [0, 0], [0, -0.12]]))
    cv.paint(win, canal, cv.value(win, hu["csf"], "csf"), "spinal_canal")


def _paint_lungs(cv: Canvas, anat: Anatomy, t: float, cavity: np.ndarray) -> None:
    """Lung bases in the posterior costophrenic recesses of the top slices."""
    extent = 1.0 - t / 0.1
    if extent <= 0.0:
        return
    body = anat.body
    for side in (-1.0, 1.0):
        theta = np.pi / 2 - side * 0.9
        _, _, _, r_cav, _ = body_radii(body, np.array(theta), t)
        cx = body["cx"] + float(r_cav) * math.cos(theta)
        cy = body["cy"] + float(r_cav) * math.sin(theta)
        rx, ry = 60.0 * math.sqrt(extent), 18.0 * math.sqrt(extent)
        win = cv.around(cx, cy, rx + 3.0)
        sdf = blob_sdf(win.x, win.y, cx, cy, rx, ry, theta + np.pi / 2)
        sdf = np.maximum(sdf, cavity[win.rows, win.cols] + 1.0)
        cv.paint(win, sdf, cv.value(win, anat.hu["lung"], "lung"), "lung")


def render(anat: Anatomy, z_mm: float, size_px: int, pixel_mm: float,
           with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    t = z_mm / ABDOMEN_LENGTH_MM
    cv = Canvas(anat, z_mm, size_px, pixel_mm, with_labels)
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
