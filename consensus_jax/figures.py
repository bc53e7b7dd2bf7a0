"""Figures in the style of the paper's Figs. 1-2: one test slice, every method side by side.

Top row: the whole slice in the display window (CT: [-160, 240] HU; MRI: amplitude from 0 to the
reference's 99.5th percentile) with the zoom region outlined; bottom row: that region enlarged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from consensus_jax.metrics import LIVER_WINDOW_HU
from consensus_jax.workdir import atomic_open


def _display(modality: str, img: np.ndarray) -> np.ndarray:
    """[H, W] display image: HU for CT ([H, W, 1] in HU/1000), amplitude for MRI ([H, W, 2])."""
    if modality == "ct":
        return 1000.0 * img[..., 0]
    return np.sqrt(np.sum(np.square(img), axis=-1))


def comparison_figure(path: Path, modality: str, panels: Mapping[str, np.ndarray],
                      zoom_box: tuple[int, int, int] | None = None,
                      per_panel_text: Mapping[str, str] | None = None) -> Path:
    """Saves a PNG with one panel per image, in the given order.

    Args:
      path: output PNG (written to a temporary name, then renamed).
      modality: "ct" or "mri".
      panels: title -> [H, W, C] image of the same slice (CT: HU/1000; MRI: real/imag).
      zoom_box: (row, col, size) of the zoomed region in pixels; default: a box of a quarter of
        the image side, centred at 45% height and 35% width (left abdomen / knee joint).
      per_panel_text: optional caption per title (e.g. "RMSE 18.4 HU, SSIM 87.1").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    images = {k: _display(modality, np.asarray(v)) for k, v in panels.items()}
    first = next(iter(images.values()))
    h, w = first.shape
    if zoom_box is None:
        size = max(h // 4, 8)
        zoom_box = (int(0.45 * h - size / 2), int(0.35 * w - size / 2), size)
    r0, c0, size = zoom_box
    if modality == "ct":
        vmin, vmax = LIVER_WINDOW_HU
    else:
        ref = images.get("Fully sampled", first)
        vmin, vmax = 0.0, float(np.percentile(ref, 99.5))
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5.3), squeeze=False,
                             gridspec_kw={"hspace": 0.08, "wspace": 0.04})
    for col, (title, img) in enumerate(images.items()):
        top, bottom = axes[0][col], axes[1][col]
        top.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        top.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), size, size, fill=False,
                                edgecolor="yellow", lw=0.8))
        bottom.imshow(img[r0:r0 + size, c0:c0 + size], cmap="gray", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
        top.set_title(title, fontsize=9)
        if per_panel_text and title in per_panel_text:
            bottom.set_xlabel(per_panel_text[title], fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        for spine in bottom.spines.values():
            spine.set_edgecolor("yellow")
    window = (f"Display window [{vmin:.0f}, {vmax:.0f}] HU; bottom row: the yellow box enlarged."
              if modality == "ct" else "Amplitude images; bottom row: the yellow box enlarged.")
    fig.suptitle(window, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curves_figure(path: Path, runs: Mapping[str, Path],
                       terms: tuple[str, ...] = ("total",)) -> Path:
    """Training curves (metrics.jsonl of each run) of the given loss terms, one panel per term."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3), squeeze=False)
    for name, workdir in runs.items():
        lines = [json.loads(s) for s in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
        for ax, term in zip(axes[0], terms, strict=True):
            pts = [(r["step"], r[term]) for r in lines if term in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name)
                ax.set_title(term, fontsize=9)
                ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
