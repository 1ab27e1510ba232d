"""3D: propagation of objects through slices, linking per-slice labels into 3D instances."""
