"""Networks built by name over every registered network: ``build_network("res_unet", spatial_dims=3, ...)``."""

from __future__ import annotations

from torch import nn

import networks.nets  # noqa: F401  (importing the package registers every network)
from networks.registry import get_network_class, registered_networks


def list_networks() -> list[str]:
    """Sorted names of all registered networks."""
    return registered_networks()


def build_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered under ``name`` with keyword arguments (``spatial_dims``, channels, ...)."""
    return get_network_class(name)(**kwargs)
