"""TFDS builder ``ct_consensus`` (kept in its own package so TFDS can find its metadata)."""

from data_prep.ct_consensus.ct_consensus_dataset_builder import Builder, CtConfig

__all__ = ["Builder", "CtConfig"]
