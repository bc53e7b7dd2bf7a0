"""Dose simulation: photon counts from line integrals, binomial thinning to low dose, HU <-> mu.

Model (monochromatic, one energy): a ray with line integral ``p`` receives
``N_full ~ Poisson(I0 exp(-p))`` photons at full dose (``I0``: unattenuated photons per ray).
A lower-dose scan of the same object keeps each photon independently with probability
``dose_fraction``: ``N_low ~ Binomial(N_full, dose_fraction)``, which is exactly
``Poisson(dose_fraction I0 exp(-p))`` and makes the full- and low-dose noise correlate with
coefficient ``sqrt(dose_fraction)``, as in the Grand Challenge's noise-inserted quarter dose.
Optional electronic noise adds ``Normal(0, sigma_e)`` counts to each measurement independently.

Before the log, counts below ``min_count`` (default 0.5 photon) are set to ``min_count``: a
zero or negative count (photon starvation, or electronic noise) has no logarithm, and 0.5 is the
usual bias-limiting choice for a count that rounds to zero. Post-log data are
``p_hat = -log(N / I0_effective)`` with ``I0_effective = dose_fraction * I0`` at low dose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water at an effective energy of about 70 keV, 1/mm."""


def hu_to_mu(hu: jax.Array, mu_water: float = MU_WATER_PER_MM) -> jax.Array:
    """Attenuation ``mu = mu_water (1 + HU / 1000)`` in 1/mm, clipped at 0 (air); any shape."""
    return jnp.maximum(mu_water * (1.0 + jnp.asarray(hu, jnp.float32) / 1000.0), 0.0)


def mu_to_hu(mu: jax.Array, mu_water: float = MU_WATER_PER_MM) -> jax.Array:
    """Hounsfield units ``1000 (mu / mu_water - 1)`` from attenuation in 1/mm; any shape."""
    return 1000.0 * (jnp.asarray(mu, jnp.float32) / mu_water - 1.0)


def _check_dose(photons_per_ray: float, dose_fraction: float) -> None:
    # Traced values (under jit) are checked by the caller that made them static or concrete.
    if isinstance(photons_per_ray, int | float) and not photons_per_ray > 0:
        raise ValueError(f"photons_per_ray (I0) must be positive, got {photons_per_ray!r}; the "
                         "Grand-Challenge-like setting is of order 1e4-1e5 photons per ray.")
    if isinstance(dose_fraction, int | float) and not 0 < dose_fraction <= 1:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction!r} "
                         "(0.25 is the quarter dose).")


def full_dose_counts(line_integrals: jax.Array, key: jax.Array,
                     photons_per_ray: float) -> jax.Array:
    """Photon counts ``Poisson(I0 exp(-p))``; same shape as ``line_integrals``, float32."""
    _check_dose(photons_per_ray, 1.0)
    mean = photons_per_ray * jnp.exp(-jnp.asarray(line_integrals, jnp.float32))
    return jax.random.poisson(key, mean, dtype=jnp.int32).astype(jnp.float32)


def thin_counts(counts: jax.Array, key: jax.Array, dose_fraction: float) -> jax.Array:
    """Binomial thinning ``Binomial(counts, dose_fraction)``: the same scan at lower dose."""
    _check_dose(1.0, dose_fraction)
    return jax.random.binomial(key, counts, dose_fraction, dtype=jnp.float32)


def add_electronic_noise(counts: jax.Array, key: jax.Array, sigma_counts: float) -> jax.Array:
    """Counts plus independent ``Normal(0, sigma_counts)`` electronic noise (may go negative)."""
    return counts + sigma_counts * jax.random.normal(key, counts.shape, jnp.float32)


def post_log(counts: jax.Array, photons_per_ray: float, min_count: float = 0.5) -> jax.Array:
    """Line integrals ``-log(max(counts, min_count) / photons_per_ray)``, float32."""
    return -jnp.log(jnp.maximum(counts, min_count) / photons_per_ray)


def simulate_dose_pair(line_integrals: jax.Array, key: jax.Array, photons_per_ray: float,
                       dose_fraction: float = 0.25, electronic_noise_counts: float = 0.0,
                       min_count: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Noisy full-dose and low-dose post-log sinograms of the same scan.

    Args:
      line_integrals: noiseless line integrals p, any shape (e.g. [B, views, detectors]).
      key: jax.random key; the result is a deterministic function of it.
      photons_per_ray: I0, unattenuated photons per ray at full dose.
      dose_fraction: low dose / full dose (0.25: quarter dose).
      electronic_noise_counts: sigma_e of the additive Gaussian electronic noise, counts.
      min_count: counts below it are raised to it before the log.

    Returns:
      (p_full, p_low), each shaped like ``line_integrals``, float32.
    """
    _check_dose(photons_per_ray, dose_fraction)
    k_full, k_thin, k_e_full, k_e_low = jax.random.split(key, 4)
    n_full = full_dose_counts(line_integrals, k_full, photons_per_ray)
    n_low = thin_counts(n_full, k_thin, dose_fraction)
    if electronic_noise_counts > 0:
        n_full = add_electronic_noise(n_full, k_e_full, electronic_noise_counts)
        n_low = add_electronic_noise(n_low, k_e_low, electronic_noise_counts)
    p_full = post_log(n_full, photons_per_ray, min_count)
    p_low = post_log(n_low, dose_fraction * photons_per_ray, min_count)
    return p_full, p_low
