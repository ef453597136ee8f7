"""Deterministic CT/MR phantoms (anatomy, NIfTI and DICOM series writers) for the demo, tests and benchmarks."""
