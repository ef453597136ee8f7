"""The core every wing stands on: bundles, checkpoints, datalists and splits, atomic writes. Imports no other wing."""
