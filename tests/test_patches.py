import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax import patches

S, H, W = 3, 20, 24


@pytest.fixture(scope="module")
def images():
    # Pixel value encodes (slice, row, col) so a patch tells where it was cut from.
    s, r, c = np.meshgrid(np.arange(S), np.arange(H), np.arange(W), indexing="ij")
    code = (s * 10000 + r * 100 + c).astype(np.float32)[..., None]
    return {"x1": jnp.asarray(code), "x2": jnp.asarray(code + 0.5),
            "x_est": jnp.asarray(np.concatenate([code, -code], -1))}


def _decode(p):
    v = np.asarray(p)[..., 0]
    return v // 10000, (v % 10000) // 100, v % 100


def test_shapes_bounds_and_alignment(images):
    out = patches.sample_patches(jax.random.PRNGKey(0), images, patches_per_slice=5, patch_size=8)
    assert out["x1"].shape == (S * 5, 8, 8, 1) and out["x_est"].shape == (S * 5, 8, 8, 2)
    np.testing.assert_array_equal(out["x2"], out["x1"] + 0.5)
    np.testing.assert_array_equal(out["x_est"][..., :1], out["x1"])
    s, r, c = _decode(out["x1"])
    np.testing.assert_array_equal(s[:, 0, 0], np.repeat(np.arange(S), 5))
    assert r.min() >= 0 and r.max() <= H - 1 and c.min() >= 0 and c.max() <= W - 1
    # Each patch is a contiguous, unrotated block.
    np.testing.assert_array_equal(r - r[:, :1, :1], np.broadcast_to(np.arange(8)[:, None], r.shape))
    np.testing.assert_array_equal(c - c[:, :1, :1], np.broadcast_to(np.arange(8)[None, :], c.shape))


def test_same_key_same_patches_different_key_different(images):
    a = patches.sample_patches(jax.random.PRNGKey(1), images, 4, 8)
    b = patches.sample_patches(jax.random.PRNGKey(1), images, 4, 8)
    c = patches.sample_patches(jax.random.PRNGKey(2), images, 4, 8)
    np.testing.assert_array_equal(a["x1"], b["x1"])
    assert not np.array_equal(a["x1"], c["x1"])


def test_corners_uniform_chi_square():
    h, w, p = 12, 12, 8  # 5 x 5 possible corners
    num = 25 * 400
    corners = np.asarray(patches.random_corners(jax.random.PRNGKey(3), num, h, w, p))
    counts = np.zeros((5, 5))
    np.add.at(counts, (corners[:, 0], corners[:, 1]), 1)
    assert counts.min() > 0 and corners.max() <= 4
    expected = num / 25
    chi2 = np.sum((counts - expected) ** 2 / expected)
    # 24 degrees of freedom: the 99.9% quantile is 51.2.
    assert chi2 < 51.2, chi2


def test_augmentation_identical_across_aligned_images(images):
    out = patches.sample_patches(jax.random.PRNGKey(4), images, 40, 8, augment=True)
    np.testing.assert_array_equal(out["x2"], out["x1"] + 0.5)
    np.testing.assert_array_equal(out["x_est"][..., 1:], -out["x1"])
    # All 8 dihedral transforms occur, and each patch still holds one contiguous block.
    s, r, c = _decode(out["x1"])
    first_row_steps = {(int(r[i, 0, 1] - r[i, 0, 0]), int(c[i, 0, 1] - c[i, 0, 0]),
                        int(r[i, 1, 0] - r[i, 0, 0]), int(c[i, 1, 0] - c[i, 0, 0]))
                       for i in range(r.shape[0])}
    assert len(first_row_steps) == 8
    for i in range(r.shape[0]):
        assert r[i].max() - r[i].min() == 7 and c[i].max() - c[i].min() == 7
        assert len({(a, b) for a, b in zip(r[i].ravel(), c[i].ravel(), strict=True)}) == 64


def test_epoch_order_visits_each_slice_p_times():
    order = np.asarray(patches.epoch_slice_order(jax.random.PRNGKey(0), 7, 40))
    np.testing.assert_array_equal(np.bincount(order), np.full(7, 40))
    assert not np.array_equal(order, np.sort(order))


def test_patch_larger_than_image_is_rejected(images):
    with pytest.raises(ValueError, match="exceeds the image size"):
        patches.sample_patches(jax.random.PRNGKey(0), images, 1, 32)
    with pytest.raises(ValueError, match="Aligned images"):
        patches.sample_patches(jax.random.PRNGKey(0),
                               {"a": jnp.zeros((2, 8, 8, 1)), "b": jnp.zeros((3, 8, 8, 1))}, 1, 4)


def test_patch_schedule_is_the_same_traced_or_not():
    # The multi-step loop computes each step's batch inside jit from a traced step; the
    # one-step loop from a Python int. Both must cut the same patches.
    from consensus_jax.train_lib import PatchSchedule

    images = {"x1": jax.random.normal(jax.random.key(0), (6, 40, 40, 1))}
    k_order, k_patch = jax.random.split(jax.random.PRNGKey(3))
    schedule = PatchSchedule(steps_per_epoch=3, batch_size=8, num_slices=6, patches_per_slice=4,
                             patch_size=32, augment=True)
    traced = jax.jit(lambda s: schedule.batch(images, k_order, k_patch, s))
    for step in range(7):
        np.testing.assert_array_equal(np.asarray(traced(jnp.int32(step))["x1"]),
                                      np.asarray(schedule.batch(images, k_order, k_patch,
                                                                step)["x1"]))
