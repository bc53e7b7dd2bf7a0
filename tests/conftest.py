"""Shared fixtures. Tests use tiny images and tiny UNets; compiled functions are shared."""

import os

# Hide GPUs from TensorFlow (it is only used for TFRecord I/O) and keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES_FOR_TF", "")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
