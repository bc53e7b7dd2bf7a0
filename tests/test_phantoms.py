"""Virtual patients: abdomen CT (determinism, anatomy HU, texture, resolution consistency,
lesions), knee MR images and stacks, MNI152 slices (optional).

References are independent of the renderer: HU ranges of contrast-enhanced abdominal CT, pixel-box
(block) averaging of a finer rendering, and the lesion positions converted to pixels by hand.
"""

import math
import sys

import matplotlib.image
import numpy as np
import pytest
from scipy import ndimage

from consensus_jax.phantoms import abdomen
from consensus_jax.phantoms.abdomen.anatomy import make_anatomy
from consensus_jax.phantoms.knee import knee_phantom, virtual_knee
from consensus_jax.phantoms.mni import mni152_slices

P64 = abdomen.default_pixel_size_mm(64)
P128 = abdomen.default_pixel_size_mm(128)
P256 = abdomen.default_pixel_size_mm(256)
P512 = abdomen.default_pixel_size_mm(512)
LIVER = abdomen.LABEL_NAMES.index("liver")
LESION = abdomen.LABEL_NAMES.index("liver_lesion")
FIRST_LOOP_START_PATIENT0 = [-30.176287630983822, -44.766636430322166, 149.8120071427303]


@pytest.fixture(scope="module")
def slices_256():
    """(image, meta) for 3 patients x 2 levels (upper: liver/spleen, lower: kidneys)."""
    return [abdomen.abdomen_slice(seed, idx, 256, P256, return_meta=True)
            for seed in (0, 1, 2) for idx in (8, 30)]


@pytest.fixture(scope="module")
def pair_128_512():
    return (abdomen.abdomen_slice(5, 14, 128, P128, return_meta=True),
            abdomen.abdomen_slice(5, 14, 512, P512, return_meta=True))


def test_deterministic_per_seed_and_patients_differ():
    a = abdomen.abdomen_slice(3, 10, 64, P64)
    b = abdomen.abdomen_slice(3, 10, 64, P64)
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    other = abdomen.abdomen_slice(4, 10, 64, P64)
    assert np.mean(np.abs(a - other)) > 20.0
    # Neighbouring slices of one patient are more alike than the same slice of two patients.
    nxt = abdomen.abdomen_slice(3, 11, 64, P64)
    assert np.corrcoef(a.ravel(), nxt.ravel())[0, 1] > np.corrcoef(a.ravel(),
                                                                   other.ravel())[0, 1]
    assert np.mean(np.abs(a - nxt)) < np.mean(np.abs(a - other))


def test_virtual_patient_stacks_the_slices():
    vol = abdomen.virtual_patient(7, 3, 64, P64)
    assert vol.shape == (3, 64, 64) and vol.dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(vol[i], abdomen.abdomen_slice(7, i, 64, P64))
    vol2, metas = abdomen.virtual_patient(7, 3, 64, P64, return_meta=True)
    np.testing.assert_array_equal(vol, vol2)
    assert [m.slice_index for m in metas] == [0, 1, 2]
    assert [m.z_mm for m in metas] == [0.0, 3.0, 6.0]
    picked = abdomen.virtual_patient(7, 3, 64, P64, slice_indices=[2, 0])
    np.testing.assert_array_equal(picked, vol[[2, 0]])
    with pytest.raises(ValueError, match="slice_indices"):
        abdomen.virtual_patient(7, 3, 64, P64, slice_indices=[3])


def test_air_outside_body_is_exactly_minus_1000(slices_256):
    for image, meta in slices_256:
        tissue = meta.labels != 0
        far = ~ndimage.binary_dilation(tissue, iterations=2)
        assert far.sum() > 0.3 * far.size
        assert np.all(image[far] == -1000.0)
        # The body fits in the reconstruction circle of the smallest allowed field of view.
        rows, cols = np.nonzero(tissue)
        radius_mm = np.hypot(rows - 127.5, cols - 127.5).max() * P256
        assert radius_mm < abdomen.MIN_FOV_MM / 2


# Typical HU of portal-venous abdominal CT (plus texture and partial-volume margins).
HU_RANGES = {
    "liver": (35, 100), "spleen": (20, 85), "aorta": (130, 230), "ivc": (110, 200),
    "kidney_cortex": (100, 200), "vertebral_body": (150, 400), "spinal_canal": (-10, 50),
    "muscle": (0, 90), "subcutaneous_fat": (-140, -60), "visceral_fat": (-140, -60),
    "liver_vessel": (100, 200),
}


def test_tissue_hu_at_organ_centres(slices_256):
    seen = set()
    for image, meta in slices_256:
        for name, (lo, hi) in HU_RANGES.items():
            if name in meta.organ_centres_px:
                seen.add(name)
                value = image[meta.organ_centres_px[name]]
                assert lo <= value <= hi, (name, value, meta.patient_seed, meta.slice_index)
    assert seen >= set(HU_RANGES) - {"vertebral_body"}  # a slice may cut a disc instead
    # The liver is on the image's left (patient's right), the spleen on the right.
    for _image, meta in slices_256:
        if "spleen" in meta.organ_centres_px:
            assert meta.organ_centres_px["liver"][1] < 128 < meta.organ_centres_px["spleen"][1]


def test_bone_and_gas_extremes():
    image, meta = abdomen.abdomen_slice(0, 10, 512, P512, return_meta=True)
    rib = meta.labels == abdomen.LABEL_NAMES.index("rib_cortex")
    assert rib.sum() > 0 and image[rib].max() > 650.0
    vol = abdomen.virtual_patient(1, 50, 64, P64)
    assert vol.min() == -1000.0 and vol.max() > 500.0


def test_liver_texture_is_present_and_smooth(slices_256, pair_128_512):
    images = list(slices_256) + [pair_128_512[0]]
    for image, meta in images:
        liver = ndimage.binary_erosion(meta.labels == LIVER, iterations=3)
        assert liver.sum() > 100
        std = image[liver].std()
        assert 5.0 <= std <= 25.0, (std, meta.patient_seed, meta.slice_index, image.shape)
        # not piecewise constant: neighbouring liver pixels almost never repeat a value
        both = liver[:, 1:] & liver[:, :-1]
        steps = np.abs(np.diff(image, axis=1))[both]
        assert np.mean(steps < 0.01) < 0.02
        # but smooth: neighbours differ by much less than the texture's spread
        assert np.median(steps) < std


def test_coarse_slice_approximates_block_average_of_fine(pair_128_512):
    (coarse, meta), (fine, _) = pair_128_512
    block = fine.reshape(128, 4, 128, 4).mean(axis=(1, 3))
    point = fine[1::4, 1::4]
    body = ndimage.binary_dilation(meta.labels != 0, iterations=1)
    err_block = np.abs(coarse - block)[body].mean()
    err_point = np.abs(coarse - point)[body].mean()
    err_shift = np.abs(coarse - np.roll(block, 1, axis=1))[body].mean()
    assert err_block < 8.0
    assert err_block < 0.5 * err_point  # pixel-area integration, not point sampling
    assert err_block < 0.3 * err_shift  # same anatomy at the same physical place
    liver = ndimage.binary_erosion(meta.labels == LIVER, iterations=2)
    assert abs(coarse[liver].mean() - block[liver].mean()) < 2.0


def test_lesions_have_the_requested_contrast():
    kwargs = {"lesion_diameter_mm": (8.0, 10.0)}
    lesions = abdomen.liver_lesions(0, **kwargs)
    assert len(lesions) >= 3
    measured = []
    for lesion in lesions[:3]:
        index = round(lesion.centre_mm[2] / abdomen.SLICE_SPACING_MM)
        image, meta = abdomen.abdomen_slice(0, index, 256, P256, lesion_contrast_hu=(-30., -30.),
                                            return_meta=True, **kwargs)
        flat = abdomen.abdomen_slice(0, index, 256, P256, lesion_contrast_hu=(0.0, 0.0),
                                     **kwargs)
        diff = image - flat
        sections = {s.lesion_index: s for s in meta.lesions}
        section = sections[lesions.index(lesion)]
        # centre and radius in pixels, worked out from the mm geometry
        row = lesion.centre_mm[1] / P256 + 127.5
        col = lesion.centre_mm[0] / P256 + 127.5
        dz = index * abdomen.SLICE_SPACING_MM - lesion.centre_mm[2]
        radius_px = math.sqrt(lesion.radius_mm ** 2 - dz ** 2) / P256
        assert section.centre_px == pytest.approx((row, col))
        assert section.radius_px == pytest.approx(radius_px)
        assert diff[round(row), round(col)] == pytest.approx(-30.0, abs=0.01)
        rr, cc = np.mgrid[:256, :256]
        near_any = np.zeros((256, 256), bool)
        for s in meta.lesions:
            near_any |= np.hypot(rr - s.centre_px[0], cc - s.centre_px[1]) < s.radius_px + 1.5
        assert np.all(diff[~near_any] == 0.0)
        dist = np.hypot(rr - row, cc - col)
        inner = image[(dist < radius_px - 1.0) & (meta.labels == LESION)]
        ring = image[(dist > radius_px + 2.0) & (dist < radius_px + 6.0) & (meta.labels == LIVER)]
        measured.append(inner.mean() - ring.mean())
    # measured against the surrounding liver, texture included, the contrast is about -30 HU
    assert np.mean(measured) == pytest.approx(-30.0, abs=8.0)


def test_changing_lesions_leaves_the_anatomy():
    a = abdomen.abdomen_slice(2, 40, 64, P64, lesion_diameter_mm=(2.0, 3.0))
    b = abdomen.abdomen_slice(2, 40, 64, P64, lesion_diameter_mm=(5.0, 6.0))
    lesion_free = np.abs(a - b) == 0
    assert lesion_free.mean() > 0.97


@pytest.mark.parametrize("seed", [21, 22, 39])
def test_slim_patients_build_with_bowel_in_front_of_the_spine(seed):
    # These seeds draw a body whose spine sits within 25 mm of the front wall; they used to
    # crash the bowel placement, which stopped a dataset build with 24 extra patients.
    anat = make_anatomy(seed, (-40.0, -10.0), (2.0, 10.0))
    spine_front = anat.organ["spine"]["y_vb"] - anat.organ["spine"]["ry"]
    small_bowel = anat.bowel[:-3]  # the last three are the colon, placed separately
    starts = np.array([loop.tube.a[0] for loop in small_bowel])
    assert np.all(starts[:, 1] < spine_front)


def test_bowel_of_an_ordinary_patient_is_unchanged_by_the_slim_body_rule():
    # Patient 0's first loop, as drawn before the slim-body rule existed.
    loop = make_anatomy(0, (-40.0, -10.0), (2.0, 10.0)).bowel[0]
    np.testing.assert_allclose(loop.tube.a[0], FIRST_LOOP_START_PATIENT0, rtol=1e-12)


def test_save_preview_png(tmp_path):
    image = np.full((32, 32), -1000.0, np.float32)
    image[:, 16:] = 1000.0
    path = tmp_path / "preview.png"
    abdomen.save_preview_png(path, image)
    png = matplotlib.image.imread(path)
    grey = png[..., :3].mean(axis=-1)
    h, w = grey.shape
    assert grey[h // 2, w // 2 - w // 8] < 0.05 and grey[h // 2, w // 2 + w // 8] > 0.95
    abdomen.save_preview_png(tmp_path / "grid.png", np.stack([image] * 3), titles=["a", "b", "c"])
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"pixel_size_mm": 1.0}, "field of view"),
    ({"size_px": 4}, "size_px"),
    ({"patient_seed": -1}, "patient_seed"),
    ({"lesion_contrast_hu": (-10.0, -40.0)}, "lesion_contrast_hu"),
    ({"slice_index": -2}, "slice_index"),
])
def test_argument_errors(kwargs, match):
    args = {"patient_seed": 0, "slice_index": 0, "size_px": 64, "pixel_size_mm": P64} | kwargs
    with pytest.raises(ValueError, match=match):
        abdomen.abdomen_slice(**args)


# MRI: knee images and virtual knees, MNI152 slices.


def test_knee_phantom_is_deterministic_and_varies_with_seed():
    a, b, c = knee_phantom(96, 0), knee_phantom(96, 0), knee_phantom(96, 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.02
    assert a.dtype == np.float32 and a.shape == (96, 96)
    assert 0.0 <= a.min() and a.max() == pytest.approx(1.0)


@pytest.mark.parametrize("size", [64, 100])
def test_knee_phantom_has_anatomy_and_fine_structure(size):
    img = knee_phantom(size, 2)
    assert img.shape == (size, size)
    # Air on both sides of the leg, tissue in the middle.
    assert img[:, :2].max() < 0.02 and img[:, -2:].max() < 0.02
    obj = img > 0.02
    assert 0.4 < obj.mean() < 0.9
    # Several tissues: dark (cortex, tendons, menisci), muscle, cartilage/marrow, fat.
    levels = np.histogram(img[obj], bins=10, range=(0, 1))[0] / obj.sum()
    assert (levels > 0.02).sum() >= 5
    # Fine structures: a noticeable share of k-space energy lies outside the 16 central
    # phase-encode lines, so undersampling there matters.
    k = np.fft.fftshift(np.fft.fft2(img))
    col_energy = (np.abs(k) ** 2).sum(axis=0)
    outer = np.ones(size, bool)
    outer[size // 2 - 8:size // 2 + 8] = False
    assert col_energy[outer].sum() / col_energy.sum() > 0.01


def test_virtual_knee_slices_are_related_and_patients_differ():
    a = virtual_knee(0, 9, 48)
    b = virtual_knee(1, 9, 48)
    near = np.abs(a[4] - a[5]).mean()
    far = np.abs(a[0] - a[8]).mean()
    other = np.abs(a[4] - b[4]).mean()
    assert 0 < near < far < other
    np.testing.assert_array_equal(a, virtual_knee(0, 9, 48))


def test_mni152_without_nilearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install \.\[mri-data\]"):
        mni152_slices(32)


def test_mni152_slices_offline():
    pytest.importorskip("nilearn")
    slices = mni152_slices(48, slice_indices=[70, 90])
    assert slices.shape == (2, 48, 48) and slices.dtype == np.float32
    assert slices.max() == pytest.approx(1.0) and slices.min() >= 0.0
    assert slices[:, 0, :].max() < 0.05  # background above the head
    with pytest.raises(ValueError, match="outside"):
        mni152_slices(48, slice_indices=[500])
