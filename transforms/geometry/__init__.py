"""Geometry: resampling with a stable grid, registration (SimpleITK), neighbouring slices as channels (2.5D)."""
