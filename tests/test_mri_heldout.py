"""Held-out k-space lines of MRI validation slices: the mask draw, what the builder stores, that
training and test data stay as they were, and the k-space criterion against NumPy."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from consensus_jax import input_pipeline
from consensus_jax.mri import masks
from consensus_jax.mri.heldout import heldout_kspace_error
from consensus_jax.mri.simulate import simulate_kspace
from data_prep.mri_consensus import mri_consensus_dataset_builder as builder_lib

ROOT = Path(__file__).resolve().parents[1]
#: SHA-256 of every array of the tiny preset's three splits as the code before held-out lines
#: existed wrote them (that commit's `python -m data_prep.mri --config=tiny`, read back with its
#: input_pipeline._read_tfds), on the 2-core AMD EPYC CPU: independent of the held-out code.
BASE_DIGESTS = json.loads((ROOT / "tests" / "data" / "mri_tiny_digests.json").read_text())


def _data_cfg(data_dir, config="tiny"):
    return ml_collections.ConfigDict({"name": "mri_consensus", "config": config,
                                      "data_dir": str(data_dir), "train_split": "train",
                                      "test_split": "test", "max_train_slices": 0})


def _digests(split):
    return {k: f"{hashlib.sha256(v.tobytes()).hexdigest()} {v.dtype} {list(v.shape)}"
            for k, v in split.items() if k in BASE_DIGESTS["train"]}


def _splits(data_dir, config="tiny"):
    return {s: input_pipeline.load_split(_data_cfg(data_dir, config), s, "mri")
            for s in ("train", "test", "validation")}


def test_holdout_keeps_the_mask_and_holds_out_the_right_share():
    us = masks.Undersampling(4.0, 8)
    width, fraction, n = 64, 0.2, 400
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    both = jax.vmap(lambda k: masks.sample_mask_with_holdout(k, width, us, (4, 60), fraction))
    mask, held = (np.asarray(a) for a in both(keys))
    plain = np.asarray(jax.vmap(lambda k: masks.sample_mask(k, width, us, (4, 60)))(keys))
    np.testing.assert_array_equal(mask, plain)  # the used lines are the same draw, bit for bit
    assert not np.any(mask & held)
    outer = masks.outer_region(width, us, (4, 60))
    assert not np.any(held[:, ~outer])  # never a centre line, never an unacquired column
    # Per outer column P(held) = p f / (1 - f) = 1/16; binomial 5-sigma bound over n * 44 draws.
    p_held = 0.25 * fraction / (1 - fraction)
    rate = held[:, outer].mean()
    assert abs(rate - p_held) < 5 * np.sqrt(p_held * (1 - p_held) / (n * outer.sum()))
    measured = held[:, outer].sum() + mask[:, outer].sum()
    assert abs(held[:, outer].sum() / measured - fraction) < 0.02
    with pytest.raises(ValueError, match="validation_holdout_fraction"):
        masks.sample_mask_with_holdout(keys[0], width, us, None, 0.8)  # p / (1 - f) > 1


def _numpy_criterion(z, maps, lines, kspace, valid):
    """Transcription with numpy's FFT: per slice, mean |F(S z) - y|^2 over measured samples."""
    cz = z[..., 0] + 1j * z[..., 1]
    cmaps = maps[..., 0] + 1j * maps[..., 1]
    ck = kspace[..., 0] + 1j * kspace[..., 1]
    out = []
    for i in range(z.shape[0]):
        coil = cmaps[i] * cz[i][None]
        k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil, axes=(-2, -1)), norm="ortho"),
                            axes=(-2, -1))
        err, count = 0.0, 0
        for c in range(maps.shape[1]):
            for j, line in enumerate(lines[i]):
                if valid[i, c, j]:
                    err += np.sum(np.abs(k[c, :, line] - ck[i, c, :, j]) ** 2)
                    count += z.shape[1]
        out.append(err / count)
    return np.array(out)


def test_criterion_matches_numpy_and_its_noise_floor():
    rng = np.random.default_rng(0)
    b, c, h, w, num = 3, 4, 16, 12, 5
    z = rng.standard_normal((b, h, w, 2)).astype(np.float32)
    maps = rng.standard_normal((b, c, h, w, 2)).astype(np.float32)
    lines = rng.integers(0, w, (b, num)).astype(np.int32)
    kspace = rng.standard_normal((b, c, h, num, 2)).astype(np.float32)
    valid = np.ones((b, c, num), np.float32)
    valid[1, :, 3:] = 0  # fewer lines on slice 1
    valid[2, 3] = 0  # fewer coils on slice 2
    got = np.asarray(heldout_kspace_error(*map(jnp.asarray, (z, maps, lines, kspace, valid))))
    np.testing.assert_allclose(got, _numpy_criterion(z, maps, lines, kspace, valid), rtol=1e-5)
    # Measurement = forward model of z + complex noise of variance s2: the criterion is s2.
    cz, cmaps = z[..., 0] + 1j * z[..., 1], maps[..., 0] + 1j * maps[..., 1]
    full = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(cmaps * cz[:, None], axes=(-2, -1)),
                                       norm="ortho"), axes=(-2, -1))
    big = 400
    lines = np.tile(np.arange(w, dtype=np.int32), big // w + 1)[None, :big].repeat(b, 0)
    s2 = 0.3
    noise = np.sqrt(s2 / 2) * (rng.standard_normal((b, c, h, big))
                               + 1j * rng.standard_normal((b, c, h, big)))
    y = np.take_along_axis(full, lines[:, None, None, :], axis=-1) + noise
    y = np.stack([y.real, y.imag], -1).astype(np.float32)
    got = np.asarray(heldout_kspace_error(jnp.asarray(z), jnp.asarray(maps), jnp.asarray(lines),
                                          jnp.asarray(y), jnp.ones((b, c, big))))
    np.testing.assert_allclose(got, s2, rtol=0.03)  # 25,600 samples per slice: ~1 % std


def test_training_and_test_slices_are_unchanged(tiny_mri_data_dir):
    splits = _splits(tiny_mri_data_dir)
    for name in ("train", "test", "validation"):
        # The used lines, halves and images of validation slices are those of a slice without
        # held-out lines too (the held-out ones are measured on top).
        assert _digests(splits[name]) == BASE_DIGESTS[name], name
    assert "heldout_kspace" not in splits["train"] and "heldout_kspace" not in splits["test"]
    assert splits["validation"]["heldout_kspace"].shape[0] == 3


@pytest.mark.slow
def test_no_holdout_builds_todays_validation_split(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.mri", "--config=tiny",
         "--config.validation_holdout_fraction=0", "--config.name=tiny_nohold",
         f"--data_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    splits = _splits(tmp_path, "tiny_nohold")
    for name in ("train", "test", "validation"):
        assert _digests(splits[name]) == BASE_DIGESTS[name], name
        assert "heldout_kspace" not in splits[name]


def test_stored_heldout_kspace_and_maps_are_the_measurement(tiny_mri_data_dir):
    val = _splits(tiny_mri_data_dir)["validation"]
    config = builder_lib.PRESETS["tiny"]
    (patient,) = [p for p in builder_lib.list_patients(config, None) if p.split == "validation"]
    images = builder_lib.load_images(config, patient)
    fraction_held = []
    for i, (image, index) in enumerate(zip(images, patient.slice_indices, strict=True)):
        assert val["slice_index"][i] == index
        # The simulation's k-space of this slice, as simulate_slice draws it from the slice key.
        k_sim, _ = jax.random.split(builder_lib.slice_key(config, patient.patient_id, index))
        noisy, _, _ = simulate_kspace(jnp.asarray(image), jax.random.split(k_sim, 1)[0],
                                      config.coil_simulation())
        noisy = np.asarray(noisy)
        n = int(val["heldout_valid"][i, 0].sum())
        lines = val["heldout_lines"][i, :n]
        mask = val["mask"][i].astype(bool)
        assert n > 0 and not mask[lines].any()
        center = masks.center_lines(64, 8)
        assert not center[lines].any()
        fraction_held.append(n / (n + (mask & ~center).sum()))
        scale = val["scale"][i]
        stored = val["heldout_kspace"][i, :, :, :n]
        np.testing.assert_allclose(stored[..., 0] + 1j * stored[..., 1],
                                   noisy[..., lines] / scale, rtol=1e-5, atol=1e-7)
        # The stored maps are those every image was combined with: x_ref from the raw k-space.
        maps = val["maps"][i, ..., 0] + 1j * val["maps"][i, ..., 1]
        coil = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(noisy, axes=(-2, -1)),
                                            norm="ortho"), axes=(-2, -1))
        den = np.sum(np.abs(maps) ** 2, axis=0)
        ref = np.where(den > 0, np.sum(np.conj(maps) * coil, 0) / np.where(den > 0, den, 1), 0)
        np.testing.assert_allclose(ref / scale, val["x_ref"][i, ..., 0] + 1j
                                   * val["x_ref"][i, ..., 1], atol=2e-5)
    assert 0.0 < np.mean(fraction_held) < 0.5  # 3 slices of about 14 measured outer lines
    meta = input_pipeline.dataset_metadata(_data_cfg(tiny_mri_data_dir))
    assert meta["validation_holdout_fraction"] == 0.2 and meta["map_threshold"] == 0.05
