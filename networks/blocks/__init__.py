"""Reusable building blocks (residual, dense, attention, fusion) for the networks."""
