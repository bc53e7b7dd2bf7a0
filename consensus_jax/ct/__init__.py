"""CT physics and data: geometry, projectors, FBP, dose simulation, view splits, TV, readers.

Modules: ``geometry`` (scanners, image grid, analytic ellipse projections), ``projector`` (Joseph
forward projector and its adjoint), ``fbp`` (Hann-filtered FBP), ``dose`` (photon counts, binomial
thinning, HU <-> attenuation), ``split`` (odd/even and other view splits), ``tv`` (TV-regularised
reconstruction), ``simulate`` (one slice end to end), ``io`` (DICOM and NumPy readers). The
virtual patients are in ``consensus_jax.phantoms.abdomen``.
"""
