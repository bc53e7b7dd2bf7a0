"""jit-compiled patch sampling from aligned image stacks (paper: 96 x 96 patches, 40 per slice).

"Aligned" images are the several views of the same slices (``x1``, ``x2``, ``x_est`` and, when
present, the reference): every patch is cut at the same location, with the same flip/rotation,
from each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp

Array = jax.Array


def _check_aligned(images: Mapping[str, Array], patch_size: int) -> tuple[int, int, int]:
    if not images:
        raise ValueError("No images given to the patch sampler.")
    shapes = {k: tuple(v.shape) for k, v in images.items()}
    spatial = {s[:3] for s in shapes.values()}
    if len(spatial) != 1 or any(len(s) != 4 for s in shapes.values()):
        raise ValueError(
            f"Aligned images must all be [S, H, W, C] with equal S, H, W; got {shapes}."
        )
    s, h, w = next(iter(spatial))
    if patch_size > h or patch_size > w:
        raise ValueError(f"patch_size {patch_size} px exceeds the image size {h} x {w} px.")
    return s, h, w


def random_corners(key: Array, num: int, height: int, width: int, patch_size: int) -> Array:
    """Uniform top-left corners [num, 2] (row, col) with every patch inside the image."""
    kr, kc = jax.random.split(key)
    rows = jax.random.randint(kr, (num,), 0, height - patch_size + 1)
    cols = jax.random.randint(kc, (num,), 0, width - patch_size + 1)
    return jnp.stack([rows, cols], axis=-1)


def _dihedral(patch: Array, k: Array) -> Array:
    """One of the 8 flips/rotations of a square [p, p, C] patch, chosen by ``k`` in [0, 8)."""
    flipped = jnp.where(k >= 4, patch[:, ::-1], patch)
    rots = jnp.stack([jnp.rot90(flipped, r, axes=(0, 1)) for r in range(4)])
    return rots[k % 4]


def extract_patches(images: Mapping[str, Array], slice_index: Array, corners: Array,
                    patch_size: int, transform: Array | None = None) -> dict[str, Array]:
    """Cuts patches at the given slices/corners from every aligned image.

    Args:
      images: name -> [S, H, W, C] aligned stacks.
      slice_index: [B] int, which slice each patch comes from.
      corners: [B, 2] int, top-left (row, col) of each patch.
      patch_size: p, in pixels.
      transform: optional [B] int in [0, 8), the flip/rotation of each patch.

    Returns:
      name -> [B, p, p, C].
    """
    def cut(stack, s, rc, k):
        c = stack.shape[-1]
        patch = jax.lax.dynamic_slice(stack[s], (rc[0], rc[1], 0), (patch_size, patch_size, c))
        return patch if k is None else _dihedral(patch, k)

    out = {}
    for name, stack in images.items():
        if transform is None:
            out[name] = jax.vmap(lambda s, rc, st=stack: cut(st, s, rc, None))(slice_index, corners)
        else:
            out[name] = jax.vmap(lambda s, rc, k, st=stack: cut(st, s, rc, k))(
                slice_index, corners, transform)
    return out


@partial(jax.jit, static_argnames=("patch_size", "augment"))
def random_patch_batch(key: Array, images: Mapping[str, Array], slice_index: Array,
                       patch_size: int, augment: bool = False) -> dict[str, Array]:
    """One patch per entry of ``slice_index`` at a uniform random location (same for all images).

    Args:
      key: PRNG key.
      images: name -> [S, H, W, C] aligned stacks.
      slice_index: [B] int slice of each patch.
      patch_size: p, in pixels.
      augment: apply one random flip/rot90 per patch, identically to every aligned image.

    Returns:
      name -> [B, p, p, C].
    """
    _, h, w = _check_aligned(images, patch_size)
    kc, ka = jax.random.split(key)
    corners = random_corners(kc, slice_index.shape[0], h, w, patch_size)
    transform = jax.random.randint(ka, slice_index.shape, 0, 8) if augment else None
    return extract_patches(images, slice_index, corners, patch_size, transform)


@partial(jax.jit, static_argnames=("patches_per_slice", "patch_size", "augment"))
def sample_patches(key: Array, images: Mapping[str, Array], patches_per_slice: int,
                   patch_size: int, augment: bool = False) -> dict[str, Array]:
    """Draws ``patches_per_slice`` patches from every slice (paper: 40 per slice per epoch).

    Args:
      key: PRNG key; the same key gives the same patches.
      images: name -> [S, H, W, C] aligned stacks.
      patches_per_slice: P.
      patch_size: p, in pixels (paper: 96).
      augment: random flip/rot90 per patch, identical across aligned images.

    Returns:
      name -> [S * P, p, p, C], patches of slice s at rows ``s*P .. s*P + P - 1``.
    """
    s, _, _ = _check_aligned(images, patch_size)
    slice_index = jnp.repeat(jnp.arange(s), patches_per_slice)
    return random_patch_batch(key, images, slice_index, patch_size, augment)


def epoch_slice_order(key: Array, num_slices: int, patches_per_slice: int) -> Array:
    """A shuffled [num_slices * patches_per_slice] list of slice indices for one epoch.

    Each slice appears exactly ``patches_per_slice`` times, so an epoch draws the paper's
    "40 patches from each training slice", spread over the batches in random order.
    """
    return jax.random.permutation(key, jnp.repeat(jnp.arange(num_slices), patches_per_slice))
