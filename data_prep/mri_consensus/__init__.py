"""TFDS builder ``mri_consensus`` (kept in its own package so TFDS can find its metadata)."""

from data_prep.mri_consensus.mri_consensus_dataset_builder import Builder, MriConfig

__all__ = ["Builder", "MriConfig"]
