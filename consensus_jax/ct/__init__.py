"""CT physics and data: geometry, projectors, FBP, dose simulation, splits, TV, phantoms and readers."""
