"""Per-platform XLA compile options for the jitted train step (measured: bench/PERF_LOG.md).

The options are passed to ``jax.jit(..., compiler_options=...)`` of one function, never through the
process-wide ``XLA_FLAGS``: importing the library changes nothing, and every other jitted function
keeps XLA's defaults.

CPU: ``xla_cpu_experimental_ynn_fusion_type=""`` (an empty list of YNNPACK fusion types) runs the
convolutions on XLA's Eigen kernels instead of YNNPACK. Eigen computes the weight gradients of the
3x3 convolutions about 1.5-1.7x faster at 48-96 px with 32-64 channels, and the paper-size
consensus step about 1.3x faster; the quick size is unchanged within noise. GPU/TPU: none.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS: Mapping[str, str] = MappingProxyType(
    {"xla_cpu_experimental_ynn_fusion_type": ""}
)


@functools.lru_cache(maxsize=8)
def _accepted(items: tuple[tuple[str, str], ...]) -> bool:
    # Option names are not a stable API: a jaxlib without them must still train (with XLA's
    # defaults), so each set is tried once on a trivial function.
    try:
        jax.jit(jnp.negative).lower(jnp.zeros(1)).compile(dict(items))
    except jax.errors.JaxRuntimeError:
        return False
    return True


def default_compiler_options(backend: str | None = None) -> dict[str, str]:
    """The ``compiler_options`` for the train step on ``backend`` (default: jax's backend).

    Returns ``CPU_COMPILER_OPTIONS`` on CPU when the installed jaxlib accepts them, else ``{}``
    (XLA's defaults), and ``{}`` on every other platform.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return {}
    items = tuple(sorted(CPU_COMPILER_OPTIONS.items()))
    return dict(items) if _accepted(items) else {}
