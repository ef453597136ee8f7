"""Folders of patients: discovery, the batch runner (a client of Predictor), per-case outputs, shards, prefetch, report."""
