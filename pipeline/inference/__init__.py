"""One case through a bundle's network: Predictor, inference options, backends, patches, TTA, crop, grid restore, postprocessing, input checks."""
