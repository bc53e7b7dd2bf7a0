"""The slice being painted: HU image, dominant-tissue labels, texture fields and paint windows."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from consensus_jax.phantoms.abdomen.anatomy import Anatomy
from consensus_jax.phantoms.abdomen.shapes import Tube, segment_distance
from consensus_jax.phantoms.abdomen.texture import TEXTURE, texture_field

AIR_HU = -1000.0

LABEL_NAMES: tuple[str, ...] = (
    "air", "skin", "subcutaneous_fat", "muscle", "visceral_fat", "liver", "liver_vessel",
    "liver_lesion", "gallbladder", "spleen", "stomach_wall", "stomach_content", "pancreas",
    "kidney_cortex", "kidney_medulla", "renal_sinus", "aorta", "ivc", "vessel", "calcification",
    "vertebral_body", "vertebral_cortex", "intervertebral_disc", "spinal_canal", "posterior_arch",
    "rib_cortex", "rib_marrow", "costal_cartilage", "bowel_wall", "bowel_content", "colon_content",
    "gas", "lung",
)
_ID = {name: i for i, name in enumerate(LABEL_NAMES)}




@dataclasses.dataclass(frozen=True, eq=False)
class Window:
    rows: slice
    cols: slice
    x: np.ndarray  # [1, w] mm
    y: np.ndarray  # [h, 1] mm


class Canvas:
    """The slice being painted: HU image, dominant-tissue labels and the texture fields."""

    def __init__(self, anat: Anatomy, z_mm: float, size_px: int, pixel_mm: float,
                 with_labels: bool):
        self.n, self.p = size_px, pixel_mm
        self.coord = (np.arange(size_px) - (size_px - 1) / 2.0) * pixel_mm
        self.hu = np.full((size_px, size_px), AIR_HU)
        self.labels = np.zeros((size_px, size_px), np.uint8) if with_labels else None
        self.fields = np.stack([texture_field(m, self.coord, z_mm, pixel_mm)
                                for m in anat.texture_modes])
        self.full = self.window(-1e9, 1e9, -1e9, 1e9)
        self.polar: tuple[np.ndarray, ...] = ()

    def window(self, x0: float, x1: float, y0: float, y1: float) -> Window:
        half = (self.n - 1) / 2.0

        def index(v: float, pad: int) -> int:
            v = min(max(float(v) / self.p + half, -2.0), self.n + 2.0)
            return min(max(math.floor(v) + pad, 0), self.n)

        rows = slice(index(y0, -1), index(y1, 2))
        cols = slice(index(x0, -1), index(x1, 2))
        return Window(rows, cols, self.coord[cols][None, :], self.coord[rows][:, None])

    def around(self, cx: float, cy: float, rx: float, ry: float | None = None) -> Window:
        ry = rx if ry is None else ry
        return self.window(cx - rx, cx + rx, cy - ry, cy + ry)

    def texture(self, win: Window, tissue: str) -> np.ndarray:
        w = TEXTURE[tissue]
        f = self.fields[:, win.rows, win.cols]
        return w[0] * f[0] + w[1] * f[1] + w[2] * f[2]

    def value(self, win: Window, base: float, tissue: str) -> np.ndarray:
        return base + self.texture(win, tissue)

    def paint(self, win: Window, sdf, value, label: str, blur_mm: float = 0.4) -> None:
        sub = self.hu[win.rows, win.cols]
        if sub.size == 0:
            return
        occ = np.clip(0.5 - np.asarray(sdf) / math.hypot(self.p, blur_mm), 0.0, 1.0)
        occ = np.broadcast_to(occ, sub.shape)
        sub += occ * (value - sub)
        if self.labels is not None:
            self.labels[win.rows, win.cols][occ >= 0.5] = _ID[label]


class SubCanvas:
    """Restricts tube windows to a parent window, so crops of the parent's arrays line up."""

    def __init__(self, cv: Canvas, parent: Window):
        self.cv, self.parent = cv, parent

    def window(self, x0, x1, y0, y1) -> Window:
        w = self.cv.window(x0, x1, y0, y1)
        pr, pc = self.parent.rows, self.parent.cols
        rows = slice(min(max(w.rows.start, pr.start), pr.stop), max(min(w.rows.stop, pr.stop),
                                                                    pr.start))
        cols = slice(min(max(w.cols.start, pc.start), pc.stop), max(min(w.cols.stop, pc.stop),
                                                                    pc.start))
        return Window(rows, cols, self.cv.coord[cols][None, :], self.cv.coord[rows][:, None])


def paint_tube(cv: Canvas, tube: Tube, z: float, sdf_fn, separate: bool = False) -> None:
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
            dist, py = segment_distance(win.x, win.y, z, tube.a[i], tube.b[i])
            d = dist - tube.radius[i]
            closer = d < best
            best = np.where(closer, d, best)
            near_y = np.where(closer, py, near_y)
        sdf_fn(win, best, near_y)
