"""consensus-jax: medical image denoisers learned from noisy data only (Wu et al. 2019)."""

__version__ = "0.1.0"
