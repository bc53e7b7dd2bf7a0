"""The built-in MRI patients: procedural sagittal knees, as single images and as related stacks.

- ``knee_phantom``: a procedural sagittal knee in the style of a proton-density turbo spin echo
  slice (the paper's NYU knee data): subcutaneous fat, striated muscle, femur, tibia and patella
  with cortical rims, trabecular marrow and physeal scars, articular cartilage, menisci, tendons,
  Hoffa's fat pad and popliteal vessels, with smooth random intensity fields. Deterministic per
  seed, any size (64-320 px and beyond). Orientation: anterior on the left (small column index),
  superior at the top (small row index); the phase-encode axis is W (columns).
- ``virtual_knee``: a virtual patient, the knee of one seed warped smoothly with the slice
  position, so slices of one patient are related and patients differ.

Data-generation code: numpy with explicit seeds (not jit-compiled); nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

#: Largest in-plane displacement of the knee warp at the outermost slices, in FOV half-widths.
KNEE_WARP_AMPLITUDE = 0.03
#: Relative anterior-posterior shrink of the leg at the outermost slices of a virtual knee.
KNEE_SHRINK = 0.15

_SUPERSAMPLE = 2


def _gaussian_field(rng: np.random.Generator, shape: tuple[int, int], corr_rows: float,
                    corr_cols: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field [H, W]; correlation lengths in units of the FOV."""
    h, w = shape
    fr = np.fft.fftfreq(h)[:, None] * h / 2.0
    fc = np.fft.fftfreq(w)[None, :] * w / 2.0
    transfer = np.exp(-2.0 * np.pi**2 * ((corr_rows * fr) ** 2 + (corr_cols * fc) ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * transfer).real
    return field / (field.std() + 1e-12)


def _ellipse_distance(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float,
                      angle_rad: float = 0.0) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), FOV units."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    du, dv = u - cu, v - cv
    ru, rv = c * du + s * dv, -s * du + c * dv
    return (np.sqrt((ru / au) ** 2 + (rv / av) ** 2) - 1.0) * min(au, av)


def _box_distance(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float,
                  radius: float) -> np.ndarray:
    """Signed distance to a box with rounded corners (negative inside), FOV units."""
    cu, cv = 0.5 * (u0 + u1), 0.5 * (v0 + v1)
    hu, hv = 0.5 * (u1 - u0) - radius, 0.5 * (v1 - v0) - radius
    qu, qv = np.abs(u - cu) - hu, np.abs(v - cv) - hv
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0) - radius


def _segment_distance(u: np.ndarray, v: np.ndarray, p0: tuple[float, float],
                      p1: tuple[float, float], half_width: float) -> np.ndarray:
    """Signed distance to a thick line segment (a tendon or ligament), FOV units."""
    pu, pv = u - p0[0], v - p0[1]
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((pu * du + pv * dv) / (du**2 + dv**2), 0.0, 1.0)
    return np.hypot(pu - t * du, pv - t * dv) - half_width


def knee_phantom(size_px: int, seed: int) -> np.ndarray:
    """A sagittal knee-like magnitude image, float32 [size_px, size_px], values in [0, 1].

    Args:
      size_px: image size in pixels (the FOV is fixed, about 140 mm as in fastMRI knee data).
      seed: selects the anatomy jitter (position, scale, rotation, bone and fat sizes) and the
        texture fields; the same seed gives the same image.
    """
    if size_px < 16:
        raise ValueError(f"size_px must be >= 16 to resolve the anatomy, got {size_px}.")
    rng = np.random.default_rng(seed)
    n = size_px * _SUPERSAMPLE
    px = 2.0 / n
    coords = (np.arange(n) + 0.5) * px - 1.0
    v0, u0 = np.meshgrid(coords, coords, indexing="ij")

    # Per-seed pose: small shift, scale and in-plane rotation of the whole knee.
    angle = np.deg2rad(rng.uniform(-6.0, 6.0))
    scale = rng.uniform(0.93, 1.07)
    shift_u, shift_v = rng.uniform(-0.05, 0.05, size=2)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (u0 - shift_u) + s * (v0 - shift_v)) / scale
    v = (-s * (u0 - shift_u) + c * (v0 - shift_v)) / scale
    jit = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731

    def soft(d: np.ndarray) -> np.ndarray:
        return np.clip(0.5 - d / px, 0.0, 1.0)

    img = np.zeros((n, n))

    def paint(d: np.ndarray, value: float | np.ndarray) -> None:
        m = soft(d)
        img[...] = img * (1.0 - m) + value * m

    # Texture finer than ~1.5 output pixels would look like noise to a denoiser: clamp it.
    finest = 3.0 / size_px
    texture = _gaussian_field(rng, (n, n), 0.12, 0.12)
    striation = _gaussian_field(rng, (n, n), 0.12, max(0.012, finest))
    trabecular = _gaussian_field(rng, (n, n), max(0.016, finest), max(0.016, finest))
    fine = _gaussian_field(rng, (n, n), 0.03, 0.03)

    # Leg outline (skin) and the subcutaneous fat layer, wider at the joint line.
    half_width = 0.62 + 0.08 * np.exp(-(v / 0.45) ** 2) + jit(-0.04, 0.04)
    centre_u = 0.02 + 0.04 * v
    leg = np.abs(u - centre_u) - half_width
    paint(leg, 0.82 + 0.04 * fine)
    fat = jit(0.05, 0.09)
    paint(leg + fat, 0.30 + 0.05 * striation + 0.02 * fine)

    # Popliteal fossa fat with the popliteal artery (dark, flow void) and vein.
    fossa_u = jit(0.30, 0.38)
    paint(_ellipse_distance(u, v, fossa_u, 0.05, 0.2, 0.42), 0.80 + 0.04 * fine)
    paint(_ellipse_distance(u, v, fossa_u + 0.05, 0.0, 0.035, 0.05), 0.04)
    paint(_ellipse_distance(u, v, fossa_u + 0.12, 0.05, 0.045, 0.06), 0.62)

    # Hoffa's fat pad, quadriceps and patellar tendons (dark, low proton density).
    paint(_ellipse_distance(u, v, -0.40, 0.17, 0.17, 0.14), 0.86 + 0.04 * fine)
    pat_u, pat_v = -0.52 + jit(-0.03, 0.03), -0.22 + jit(-0.04, 0.04)
    paint(_segment_distance(u, v, (pat_u + 0.02, pat_v - 0.15), (pat_u + 0.06, -1.1), 0.03), 0.05)
    paint(_segment_distance(u, v, (pat_u + 0.02, pat_v + 0.15), (-0.40, 0.58), 0.022), 0.05)

    # Femur: shaft plus condyle; cartilage band first, then cortex, then marrow.
    cond_au, cond_av = jit(0.33, 0.39), jit(0.22, 0.27)
    cond_v = 0.21 - cond_av
    femur = np.minimum(_box_distance(u, v, -0.26, 0.2, -1.3, cond_v, 0.08),
                       _ellipse_distance(u, v, -0.02, cond_v, cond_au, cond_av))
    below = v > cond_v - 0.05
    paint(np.where(below, femur - 0.032, 1.0), 0.58 + 0.03 * fine)
    paint(femur, 0.06)
    cortex = np.where(v < cond_v - 0.1, 0.045, 0.022)
    paint(femur + cortex, 0.70 + 0.06 * trabecular + 0.03 * texture)
    physis_v = cond_v - 0.07 + 0.02 * np.sin(9.0 * u)
    paint(np.where(femur + cortex < 0, np.abs(v - physis_v) - 0.007, 1.0), 0.18)

    # Tibia: plateau plus shaft, cartilage on the plateau, physeal scar.
    plateau_v = cond_v + cond_av + 0.065
    tib_av = jit(0.13, 0.17)
    tibia = np.minimum(
        _ellipse_distance(u, v, -0.02, plateau_v + tib_av, 0.37, tib_av),
        _box_distance(u, v, -0.24, 0.17, plateau_v + tib_av, 1.3, 0.06),
    )
    paint(np.where(v < plateau_v + 0.06, tibia - 0.03, 1.0), 0.58 + 0.03 * fine)
    paint(tibia, 0.06)
    paint(tibia + 0.024, 0.70 + 0.06 * trabecular + 0.03 * texture)
    physis_t = plateau_v + tib_av + 0.1 + 0.02 * np.sin(7.0 * u + 1.0)
    paint(np.where(tibia + 0.024 < 0, np.abs(v - physis_t) - 0.007, 1.0), 0.18)

    # Joint fluid line and the menisci (dark wedges at the anterior and posterior horns).
    joint_v = 0.5 * (cond_v + cond_av + plateau_v)
    fluid = np.maximum(np.abs(v - joint_v) - 0.005, np.abs(u + 0.02) - 0.3)
    paint(fluid, 0.9)
    paint(_ellipse_distance(u, v, -0.33, joint_v, 0.08, 0.026, 0.15), 0.05)
    paint(_ellipse_distance(u, v, 0.30, joint_v, 0.09, 0.028, -0.15), 0.05)

    # Patella with its articular cartilage facing the femur.
    pat_au, pat_av = jit(0.075, 0.095), jit(0.15, 0.19)
    patella = _ellipse_distance(u, v, pat_u, pat_v, pat_au, pat_av)
    paint(np.where(u > pat_u, patella - 0.03, 1.0), 0.58 + 0.03 * fine)
    paint(patella, 0.06)
    paint(patella + 0.02, 0.70 + 0.06 * trabecular + 0.03 * texture)

    inside = soft(leg)
    img = img * (1.0 + 0.06 * texture * inside)
    img = img.reshape(size_px, _SUPERSAMPLE, size_px, _SUPERSAMPLE).mean(axis=(1, 3))
    return np.clip(img / max(img.max(), 1e-12), 0.0, 1.0).astype(np.float32)


def virtual_knee(seed: int, num_slices: int, size_px: int) -> np.ndarray:
    """A stack of related sagittal knee slices, float32 [num_slices, size_px, size_px] in [0, 1].

    The knee of ``knee_phantom(., seed)`` is warped with the slice position t in [-1, 1]
    (medial to lateral): the leg narrows anterior-posteriorly by up to ``KNEE_SHRINK`` towards
    the outer slices, and a smooth random displacement ``t D1 + t^2 D2`` (fields fixed per seed,
    up to ``KNEE_WARP_AMPLITUDE`` FOV half-widths) moves the anatomy, so neighbouring slices
    differ a little and slices far apart differ more. Computed at twice the resolution and
    averaged down 2 x 2.
    """
    from scipy.ndimage import map_coordinates

    n = 2 * size_px
    base = knee_phantom(n, seed).astype(np.float64)
    rng = np.random.default_rng([seed, 17])
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    v, u = np.meshgrid(coords, coords, indexing="ij")

    def smooth_field() -> np.ndarray:
        # Low-order trigonometric field: displacements vary over a third of the FOV or more.
        field = np.zeros_like(u)
        for a in range(3):
            for b in range(3):
                c = rng.standard_normal(2)
                field += (c[0] * np.cos(np.pi * (a * u + b * v) / 2)
                          + c[1] * np.sin(np.pi * (a * u + b * v) / 2)) / (1 + a + b)
        return field / np.abs(field).max()

    d1 = [smooth_field() for _ in range(2)]
    d2 = [smooth_field() for _ in range(2)]
    positions = np.linspace(-1.0, 1.0, num_slices) if num_slices > 1 else np.zeros(1)
    out = np.empty((num_slices, size_px, size_px), np.float32)
    for i, t in enumerate(positions):
        amp = KNEE_WARP_AMPLITUDE
        src_u = u / (1.0 - KNEE_SHRINK * t**2) + amp * (t * d1[0] + t**2 * d2[0])
        src_v = v + amp * (t * d1[1] + t**2 * d2[1])
        rows = (src_v + 1.0) / 2.0 * n - 0.5
        cols = (src_u + 1.0) / 2.0 * n - 0.5
        img = map_coordinates(base, [rows, cols], order=1, mode="constant", cval=0.0)
        out[i] = img.reshape(size_px, 2, size_px, 2).mean(axis=(1, 3))
    return np.clip(out, 0.0, 1.0)
