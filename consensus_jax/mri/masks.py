"""Random Cartesian undersampling masks along the phase-encode axis (paper: 4x, 48 centre lines).

A mask is a boolean vector ``[W]`` over the phase-encode (ky) columns, the LAST axis of
``[..., coils, kx, ky]`` k-space; it is broadcast over the readout (kx) axis. The
``num_center_lines`` columns around the k-space centre (column ``W // 2``) are always sampled
(auto-calibration signal, ACS); every other acquired column, an "outer" line, is sampled
independently at random with probability ``p``:

- ``convention="outer"`` (default, the paper's reading): ``p = 1 / acceleration``. At 4x each
  half of the consensus split then holds an outer line with probability 1/8: the paper's "8x each"
  and its amplification factor of 8.
- ``convention="fastmri"``: the acceleration counts the centre lines too, as in the fastMRI
  challenge masks: ``p = (N / acceleration - num_center_lines) / (N - num_center_lines)`` with
  ``N`` the number of acquired columns, so that about ``N / acceleration`` columns are sampled.

``acquired = (start, stop)`` restricts the random region to columns ``start <= ky < stop``:
fastMRI knee k-space is zero-padded at the phase-encode edges (see ``fastmri.acquired_columns``),
and sampling those columns would fake a higher acceleration than the data has.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Convention = Literal["outer", "fastmri"]
_CONVENTIONS = ("outer", "fastmri")


@dataclass(frozen=True)
class Undersampling:
    """Cartesian undersampling pattern (paper: ``acceleration=4``, ``num_center_lines=48``).

    Attributes:
      acceleration: R, the undersampling factor (> 1); see the module docstring for what it
        counts under each convention.
      num_center_lines: ACS columns around ky = 0, always sampled and kept in both halves.
      convention: "outer" (outer-line probability 1/R) or "fastmri" (R counts all lines).
    """

    acceleration: float = 4.0
    num_center_lines: int = 48
    convention: Convention = "outer"

    def __post_init__(self) -> None:
        if not self.acceleration > 1.0:
            raise ValueError(
                f"Undersampling.acceleration must be > 1, got {self.acceleration}; "
                "use 4.0 for the paper's knee setting."
            )
        if self.num_center_lines < 1:
            raise ValueError(
                f"Undersampling.num_center_lines must be >= 1 (the ACS lines estimate the coil "
                f"maps), got {self.num_center_lines}."
            )
        if self.convention not in _CONVENTIONS:
            raise ValueError(
                f"Undersampling.convention must be one of {_CONVENTIONS}, "
                f"got {self.convention!r}."
            )


def center_slice(width: int, num_center_lines: int) -> slice:
    """Columns of the ACS block: ``num_center_lines`` columns centred on ky = 0 (column W // 2)."""
    if not 0 < num_center_lines <= width:
        raise ValueError(
            f"num_center_lines={num_center_lines} must lie in [1, width={width}] phase-encode "
            "columns; lower it or use wider k-space."
        )
    start = width // 2 - num_center_lines // 2
    return slice(start, start + num_center_lines)


def center_lines(width: int, num_center_lines: int) -> np.ndarray:
    """Boolean [W] (numpy, static): True on the ACS columns."""
    center = np.zeros(width, dtype=bool)
    center[center_slice(width, num_center_lines)] = True
    return center


def _acquired_bounds(width: int, acquired: tuple[int, int] | None) -> tuple[int, int]:
    start, stop = (0, width) if acquired is None else (int(acquired[0]), int(acquired[1]))
    if not 0 <= start < stop <= width:
        raise ValueError(
            f"acquired columns {acquired} must satisfy 0 <= start < stop <= width={width}; "
            "pass None when every phase-encode column was acquired."
        )
    return start, stop


def outer_region(width: int, undersampling: Undersampling,
                 acquired: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean [W] (numpy, static): acquired columns outside the ACS block (the random region)."""
    start, stop = _acquired_bounds(width, acquired)
    center = center_lines(width, undersampling.num_center_lines)
    cs = center_slice(width, undersampling.num_center_lines)
    if cs.start < start or cs.stop > stop:
        raise ValueError(
            f"The {undersampling.num_center_lines} centre columns [{cs.start}, {cs.stop}) fall "
            f"outside the acquired columns [{start}, {stop}); check the header's "
            "kspace_encoding_step_1 centre or lower num_center_lines."
        )
    region = np.zeros(width, dtype=bool)
    region[start:stop] = True
    return region & ~center


def outer_line_probability(undersampling: Undersampling, num_acquired: int) -> float:
    """p, the probability that an outer (non-ACS) column is sampled, for ``num_acquired`` columns.

    Raises ValueError when the centre lines alone exceed the fastMRI-convention line budget.
    """
    r = float(undersampling.acceleration)
    n_c = undersampling.num_center_lines
    if num_acquired <= n_c:
        raise ValueError(
            f"Only {num_acquired} acquired phase-encode columns for {n_c} centre lines: "
            "no outer lines are left to undersample; lower num_center_lines."
        )
    if undersampling.convention == "outer":
        return 1.0 / r
    p = (num_acquired / r - n_c) / (num_acquired - n_c)
    if p <= 0.0:
        raise ValueError(
            f"convention='fastmri' with acceleration={r} keeps {num_acquired / r:.1f} of "
            f"{num_acquired} columns, fewer than the {n_c} centre lines; lower the acceleration "
            "or num_center_lines, or use convention='outer'."
        )
    return p


@partial(jax.jit, static_argnames=("width", "undersampling", "acquired"))
def sample_mask(key: Array, width: int, undersampling: Undersampling,
                acquired: tuple[int, int] | None = None) -> Array:
    """One random mask, bool [W]: ACS columns always, outer columns with probability p."""
    region = outer_region(width, undersampling, acquired)
    p = outer_line_probability(undersampling, int(region.sum()) + undersampling.num_center_lines)
    center = center_lines(width, undersampling.num_center_lines)
    outer = jax.random.uniform(key, (width,)) < p
    return jnp.asarray(center) | (outer & jnp.asarray(region))


def check_holdout_fraction(fraction: float, undersampling: Undersampling,
                           num_acquired: int) -> float:
    """The outer-line probability ``p / (1 - fraction)`` of a mask that also holds out lines;
    raises ValueError unless it is a probability."""
    p = outer_line_probability(undersampling, num_acquired)
    if not 0.0 <= fraction < 1.0 or p / (1.0 - fraction) > 1.0:
        raise ValueError(
            f"validation_holdout_fraction={fraction} must lie in [0, {1.0 - p:g}) at outer-line "
            f"probability {p:g} (held-out and used lines together are sampled with probability "
            "p / (1 - fraction) <= 1); 0.2 is the default.")
    return p / (1.0 - fraction)


@partial(jax.jit, static_argnames=("width", "undersampling", "acquired", "fraction"))
def sample_mask_with_holdout(key: Array, width: int, undersampling: Undersampling,
                             acquired: tuple[int, int] | None = None,
                             fraction: float = 0.2) -> tuple[Array, Array]:
    """A mask and a disjoint set of held-out outer lines, bool [W] each.

    The mask is exactly ``sample_mask(key, ...)`` (same key, same uniform draw ``u`` per column:
    sampled where ``u < p``). An outer column is held out where ``p <= u < p / (1 - fraction)``:
    independently of the mask with probability ``p * fraction / (1 - fraction)``, so that the
    held-out lines are ``fraction`` of all the measured outer lines (used or held out) in
    expectation, and the used lines keep the pattern (and the halves their amplification) of a
    slice without held-out lines.
    """
    region = outer_region(width, undersampling, acquired)
    num_acquired = int(region.sum()) + undersampling.num_center_lines
    p = outer_line_probability(undersampling, num_acquired)
    p_measured = check_holdout_fraction(fraction, undersampling, num_acquired)
    center = center_lines(width, undersampling.num_center_lines)
    u = jax.random.uniform(key, (width,))
    region = jnp.asarray(region)
    mask = jnp.asarray(center) | ((u < p) & region)
    held = (u >= p) & (u < p_measured) & region
    return mask, held


@partial(jax.jit, static_argnames=("num_slices", "width", "undersampling", "acquired"))
def sample_masks(key: Array, num_slices: int, width: int, undersampling: Undersampling,
                 acquired: tuple[int, int] | None = None) -> Array:
    """A different mask per slice, bool [num_slices, W] (paper: "different random masks")."""
    keys = jax.random.split(key, num_slices)
    return jax.vmap(lambda k: sample_mask(k, width, undersampling, acquired))(keys)
