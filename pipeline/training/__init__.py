"""Training wiring for the bundles: train_bundle, engine handlers, losses, metrics, the fusion schedule."""
