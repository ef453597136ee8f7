"""A name -> network-class registry (timm style): ``build_network("res_unet", spatial_dims=3, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register_network(name: str) -> Callable[[T], T]:
    """Class decorator that registers a network under ``name`` (lower snake case, unique)."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"network name {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    import networks.nets  # noqa: F401  (importing the package registers every network)


def list_networks() -> list[str]:
    """Sorted names of all registered networks."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_network_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; unknown names raise and list the valid ones."""
    _ensure_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown network {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def build_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered under ``name`` with keyword arguments (``spatial_dims``, channels, ...)."""
    return get_network_class(name)(**kwargs)
