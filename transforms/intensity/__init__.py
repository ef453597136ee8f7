"""Intensity: CT windows, CLAHE (torch and numba), foreground z-score, as MONAI array and dictionary transforms."""
