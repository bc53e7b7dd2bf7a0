"""FBP: parallel beam against scikit-image iradon (Hann); fan beam against analytic projections."""

import math

import numpy as np
import pytest
from skimage.transform import iradon, radon

from consensus_jax.ct.fbp import fbp, padded_length, ramp_kernel, window_response
from consensus_jax.ct.geometry import (
    Ellipse,
    FanBeamGeometry,
    ImageGrid,
    ParallelBeamGeometry,
    ellipse_image,
    ellipse_line_integrals,
)

# A sharp-edged, Shepp-Logan-like phantom (values in 1/mm), smaller than the inscribed circle.
PHANTOM = (
    Ellipse((0.0, 0.0), (70.0, 52.0), 0.0, 0.02),
    Ellipse((0.0, -1.5), (66.0, 48.0), 0.0, -0.004),
    Ellipse((22.0, 0.0), (11.0, 31.0), math.radians(-18), -0.006),
    Ellipse((-22.0, 0.0), (16.0, 41.0), math.radians(18), -0.006),
    Ellipse((0.0, 25.0), (21.0, 25.0), 0.0, 0.003),
    Ellipse((0.0, -10.0), (5.0, 5.0), 0.0, 0.004),
    Ellipse((-8.0, -40.0), (5.0, 2.5), 0.0, 0.004),
)


def test_ramp_filter_and_hann_window():
    length = padded_length(100)
    assert length == 256
    spectrum = np.real(np.fft.rfft(ramp_kernel(length, 1.0)))
    freqs = np.fft.rfftfreq(length)
    # Away from DC the band-limited kernel's spectrum is the ramp |f| (cycles per sample).
    np.testing.assert_allclose(spectrum[8:], freqs[8:], rtol=0.02)
    assert 0 < spectrum[0] < freqs[1]
    hann = window_response(length, "hann")
    assert hann[0] == pytest.approx(1.0)
    assert hann[-1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(hann[length // 4], 0.5, atol=1e-12)
    half = window_response(length, "hann", cutoff=0.5)
    assert np.all(half[freqs > 0.25] == 0.0)


def test_parallel_fbp_matches_skimage_iradon_hann():
    # Odd size: scikit-image's rotation centre size // 2 is then the grid centre.
    size, views, pixel_mm = 129, 180, 1.5
    grid = ImageGrid(size, pixel_mm)
    image = ellipse_image(PHANTOM, grid)
    theta_deg = np.arange(views) * 180.0 / views
    sinogram = radon(image, theta_deg, circle=True)
    reference = iradon(sinogram, theta_deg, filter_name="hann", circle=True)
    geometry = ParallelBeamGeometry(grid, num_views=views, num_detectors=size,
                                    detector_spacing_mm=pixel_mm)
    # scikit-image sums pixels: its line integrals are ours divided by the pixel size in mm.
    ours = np.asarray(fbp((sinogram.T * pixel_mm).astype(np.float32), geometry))
    disk = grid.fov_mask(radius_mm=((size // 2) - 0.5) * pixel_mm)
    rel_rmse = (np.sqrt(np.mean((ours - reference)[disk] ** 2))
                / np.sqrt(np.mean(reference[disk] ** 2)))
    assert rel_rmse < 0.01, rel_rmse


# 180 views use the quarter-turn grouping of the backprojection, 179 the plain view loop.
@pytest.mark.parametrize("views", [180, 179])
def test_fan_fbp_at_least_as_accurate_as_skimage_parallel(views):
    grid = ImageGrid(128, 1.5)
    geometry = FanBeamGeometry(grid, num_views=views, num_detectors=200, detector_spacing_mm=2.5)
    image = ellipse_image(PHANTOM, grid, supersampling=4)
    projections = ellipse_line_integrals(PHANTOM, geometry).astype(np.float32)
    ours = np.asarray(fbp(projections, geometry))
    theta_deg = np.arange(views) * 180.0 / views
    skimage_recon = iradon(radon(image, theta_deg, circle=True), theta_deg,
                           filter_name="hann", circle=True)
    fov = grid.fov_mask()
    ours_rmse = np.sqrt(np.mean((ours - image)[fov] ** 2))
    skimage_rmse = np.sqrt(np.mean((skimage_recon - image)[fov] ** 2))
    assert ours_rmse <= skimage_rmse, (ours_rmse, skimage_rmse)
    # The mean attenuation in the field of view is right to 0.5% (no scale error).
    assert abs(ours[fov].mean() / image[fov].mean() - 1) < 0.005


def test_fbp_of_a_view_subset_is_unbiased():
    grid = ImageGrid(64, 3.0)
    geometry = FanBeamGeometry(grid, num_views=120, num_detectors=100, detector_spacing_mm=5.0)
    projections = ellipse_line_integrals(PHANTOM, geometry).astype(np.float32)
    full = np.asarray(fbp(projections, geometry))
    odd = np.arange(1, geometry.num_views, 2)
    even = np.arange(0, geometry.num_views, 2)
    x_odd = np.asarray(fbp(projections[odd], geometry.subset(odd)))
    x_even = np.asarray(fbp(projections[even], geometry.subset(even)))
    # FBP is linear and weighs each view by 2 pi / views used: the halves average to the full.
    np.testing.assert_allclose(0.5 * (x_odd + x_even), full, atol=2e-4 * np.abs(full).max())
    fov = grid.fov_mask()
    assert abs(x_odd[fov].mean() / full[fov].mean() - 1) < 0.01
    # Slices of a batch are reconstructed independently.
    batch = np.asarray(fbp(np.stack([projections, -2.0 * projections]), geometry))
    np.testing.assert_allclose(batch[0], full, atol=1e-6 * np.abs(full).max())
    np.testing.assert_allclose(batch[1], -2.0 * full, atol=1e-5 * np.abs(full).max())


def test_fbp_rejects_short_scan_and_bad_shapes():
    geometry = FanBeamGeometry(ImageGrid(32, 3.0), num_views=10, num_detectors=40,
                               detector_spacing_mm=5.0, angular_range_rad=math.pi)
    with pytest.raises(ValueError, match="full scan"):
        fbp(np.zeros((10, 40), np.float32), geometry)
    with pytest.raises(ValueError, match="views, detectors"):
        fbp(np.zeros((11, 40), np.float32), geometry)
