"""Scoring checkpoints on labelled cases: per-case metrics, tables, run comparison, paired statistics."""
