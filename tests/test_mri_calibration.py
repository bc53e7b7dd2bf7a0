"""MRI noise calibration: the zero-filling error's noise part, SENSE's g-factor, the CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from consensus_jax.errors import ConfigError
from consensus_jax.mri.calibration import baseline_errors, interpolate_snr
from consensus_jax.mri.masks import Undersampling
from consensus_jax.mri.pipeline import ConsensusMRIConfig
from consensus_jax.mri.simulate import CoilSimulation
from consensus_jax.phantoms.knee import knee_phantom

SIZE = 64
IMAGE = jnp.asarray(knee_phantom(SIZE, 3))


def _config(acceleration: float = 4.0) -> ConsensusMRIConfig:
    return ConsensusMRIConfig(undersampling=Undersampling(acceleration, 8))


def test_noise_only_part_scales_as_the_noise_variance():
    key = jax.random.key(0)
    out = {snr: baseline_errors(IMAGE, key, CoilSimulation(num_coils=4, snr=snr), _config())
           for snr in (40.0, 20.0)}
    # Same unit noise, mask and phase at both SNRs: zero-filling is linear, so its noise-only
    # mean square (in k-space units) grows 4x when sigma doubles. The maps, estimated from the
    # noisy centre lines, change a little with the noise.
    power = {s: (float(o["zf_noise_1e3"]) * float(o["scale"])) ** 2 for s, o in out.items()}
    assert power[20.0] / power[40.0] == pytest.approx(4.0, rel=0.05)
    alias = {s: float(o["zf_aliasing_1e3"]) * float(o["scale"]) for s, o in out.items()}
    assert alias[20.0] == pytest.approx(alias[40.0], rel=0.05)
    total = {s: float(o["zf_rmse_1e3"]) for s, o in out.items()}
    assert all(np.isfinite(list(total.values())))


def test_sense_amplifies_noise_more_at_higher_acceleration():
    coils = CoilSimulation(num_coils=4, snr=20.0)
    runs = {r: [baseline_errors(IMAGE, jax.random.key(k), coils, _config(r)) for k in range(3)]
            for r in (2.0, 4.0)}
    mean = {r: {name: np.mean([float(o[name]) for o in outs])
                for name in ("g_factor", "noise_amplification")} for r, outs in runs.items()}
    # SENSE's noise vs the fully sampled image's grows with R; at 4x it is more than the
    # sqrt(R) that undersampling alone costs (g > 1). Zero-filling would give sqrt(f) < 1.
    assert mean[4.0]["noise_amplification"] > mean[2.0]["noise_amplification"] > 1.0
    assert mean[4.0]["g_factor"] > 1.0


def test_interpolated_snr_brackets_the_target():
    snrs = np.array([100.0, 30.0, 10.0])
    ratio = np.array([0.6, 0.9, 1.5])
    snr = interpolate_snr(snrs, ratio, target=1.2)
    assert 10.0 < snr < 30.0
    # Linear in log SNR: halfway between 0.9 and 1.5 is the geometric mean of 30 and 10.
    assert snr == pytest.approx(np.sqrt(300.0), rel=1e-6)
    assert interpolate_snr(snrs, ratio, target=2.0) is None


def test_calibrate_cli_prints_the_table(capsys):
    from data_prep import mri

    assert mri.main(["--config=tiny", "--calibrate", "--snrs=100,5",
                     "--calibration_slices=1"]) == 0
    out = capsys.readouterr().out
    assert "| SNR | zero-filling | SENSE |" in out
    assert "| 100 |" in out and "| 5 |" in out


def test_calibrate_cli_rejects_bad_snrs():
    from data_prep import mri

    with pytest.raises(ConfigError, match="--snrs: positive numbers"):
        mri.main(["--config=tiny", "--calibrate", "--snrs=30,-1"])
