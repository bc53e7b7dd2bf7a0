"""consensus-jax: medical image denoisers learned from noisy data only (Wu et al. 2019).

Using a trained model from Python: ``consensus_jax.api`` (docs/usage.md).
"""

__version__ = "0.1.0"
