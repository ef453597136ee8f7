"""Augmentation: spatial and intensity presets from MONAI transforms, MR artefacts through TorchIO."""
