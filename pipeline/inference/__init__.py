"""One case through a bundle's network: Predictor, inference options, patches, TTA, crop, grid restore, postprocessing, input checks."""
