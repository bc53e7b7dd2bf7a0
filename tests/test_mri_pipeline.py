"""k-space -> consensus inputs: shapes, shared scale and maps, halves, references, SENSE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.mri.masks import Undersampling, center_lines
from consensus_jax.mri.pipeline import ConsensusMRIConfig, consensus_inputs, from_channels
from consensus_jax.mri.simulate import CoilSimulation, simulate_kspace, simulate_slice
from consensus_jax.phantoms.knee import knee_phantom

SIZE, SLICES, CENTER = 64, 3, 16
COILS = CoilSimulation(num_coils=8, snr=100.0)
CONFIG = ConsensusMRIConfig(undersampling=Undersampling(4.0, CENTER))


@pytest.fixture(scope="module")
def batch():
    images = jnp.asarray(np.stack([knee_phantom(SIZE, s) for s in range(SLICES)]))
    kspace, clean, _ = jax.vmap(lambda im, k: simulate_kspace(im, k, COILS))(
        images, jax.random.split(jax.random.key(0), SLICES))
    out = consensus_inputs(kspace, jax.random.key(1), CONFIG, kspace_clean=clean,
                           return_maps=True)
    return np.asarray(kspace), np.asarray(clean), jax.tree.map(np.asarray, out)


def _numpy_combine(kspace, maps):
    coil = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))
    den = (np.abs(maps) ** 2).sum(-3)
    num = (np.conj(maps) * coil).sum(-3)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0)


def _complex(x):
    return x[..., 0] + 1j * x[..., 1]


def test_outputs_shapes_dtypes_and_scale(batch):
    _, _, out = batch
    for name in ("x1", "x2", "x_est", "x_zf", "x_ref", "x_clean"):
        assert out[name].shape == (SLICES, SIZE, SIZE, 2) and out[name].dtype == np.float32
    for name in ("mask", "mask1", "mask2"):
        assert out[name].shape == (SLICES, SIZE) and out[name].dtype == np.uint8
    assert out["scale"].shape == (SLICES,) and out["maps"].shape == (SLICES, 8, SIZE, SIZE)
    # x_est is normalised to [-1, 1] with its largest |Re| or |Im| at exactly 1.
    np.testing.assert_allclose(np.abs(out["x_est"]).max(axis=(1, 2, 3)), 1.0, rtol=1e-6)
    assert len({m.tobytes() for m in out["mask"]}) == SLICES
    centre = center_lines(SIZE, CENTER)
    assert out["mask"][:, centre].all()
    np.testing.assert_array_equal(out["mask1"] | out["mask2"], out["mask"])
    np.testing.assert_array_equal(out["mask1"] & out["mask2"], np.broadcast_to(
        centre, out["mask"].shape).astype(np.uint8))


def test_images_are_the_documented_reconstructions(batch):
    # Rebuild every zero-filled image with numpy from the returned masks and maps: all use the
    # same maps and the same per-slice scale.
    kspace, clean, out = batch
    maps, scale = out["maps"], out["scale"][:, None, None]
    centre = center_lines(SIZE, CENTER)
    w1 = np.where(centre, 1.0, 8.0 * out["mask1"])[:, None, None, :]
    expected = {
        "x1": _numpy_combine(kspace * w1, maps),
        "x_zf": _numpy_combine(kspace * out["mask"][:, None, None, :], maps),
        "x_ref": _numpy_combine(kspace, maps),
        "x_clean": _numpy_combine(clean, maps),
    }
    for name, ref in expected.items():
        np.testing.assert_allclose(_complex(out[name]) * scale, ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_allclose(_complex(out["x1"]), np.asarray(from_channels(out["x1"])))


def test_noise_level_and_sense_quality(batch):
    _, _, out = batch
    support = out["support"].astype(bool)
    ref, clean = _complex(out["x_ref"]) * out["scale"][:, None, None], _complex(
        out["x_clean"]) * out["scale"][:, None, None]
    # Combined noise std = max|x| / snr on the support (RSS-normalised maps, unitary FFT).
    sigma = np.abs(clean).max(axis=(1, 2)) / COILS.snr
    measured = np.sqrt(np.mean(np.abs(ref - clean)[support] ** 2))
    np.testing.assert_allclose(measured, sigma.mean(), rtol=0.1)

    def rel(name):
        return np.linalg.norm(out[name] - out["x_clean"]) / np.linalg.norm(out["x_clean"])

    # SENSE beats zero-filling; each half (4x fewer lines at 8x weight) is worse than both.
    assert rel("x_est") < 0.8 * rel("x_zf")
    assert rel("x1") > rel("x_zf") and rel("x2") > rel("x_zf")


def test_single_slice_noiseless_and_acquired_columns():
    image = jnp.asarray(knee_phantom(SIZE, 5))
    out = simulate_slice(image, jax.random.key(2), CoilSimulation(8, snr=None), CONFIG)
    assert "x_clean" not in out and out["x1"].shape == (SIZE, SIZE, 2)
    kspace, _, _ = simulate_kspace(image, jax.random.key(3), CoilSimulation(8, snr=None))
    out = consensus_inputs(kspace, jax.random.key(4), CONFIG, acquired=(6, 58))
    mask = np.asarray(out["mask"])
    assert not mask[:6].any() and not mask[58:].any()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="complex"):
        consensus_inputs(jnp.zeros((4, 8, 8)), jax.random.key(0), CONFIG)
    with pytest.raises(ValueError, match="kspace_clean"):
        consensus_inputs(jnp.zeros((4, 8, 32), jnp.complex64), jax.random.key(0), CONFIG,
                         kspace_clean=jnp.zeros((4, 8, 16), jnp.complex64))
    with pytest.raises(ValueError, match="sense_iterations"):
        ConsensusMRIConfig(sense_iterations=0)
