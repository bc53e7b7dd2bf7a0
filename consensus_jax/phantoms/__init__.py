"""The built-in virtual patients of both modalities: data generation, apart from the physics.

``abdomen``: procedural abdomen CT patients in HU (the stand-in for the LDCT Grand Challenge);
``knee``: procedural sagittal knee MR images and related stacks of them (the stand-in for the NYU
knee data); ``mni``: slices of the MNI152 template (optional, nilearn). The physics that turns
these images into scans lives in ``consensus_jax.ct`` and ``consensus_jax.mri``.
"""

from consensus_jax.phantoms import abdomen
from consensus_jax.phantoms.abdomen import abdomen_slice, liver_lesions, virtual_patient
from consensus_jax.phantoms.knee import knee_phantom, virtual_knee
from consensus_jax.phantoms.mni import mni152_slices

__all__ = [
    "abdomen",
    "abdomen_slice",
    "knee_phantom",
    "liver_lesions",
    "mni152_slices",
    "virtual_knee",
    "virtual_patient",
]
