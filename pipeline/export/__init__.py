"""Models that travel: a training run packed as a self-contained MONAI bundle, and the MLflow Model Registry."""
