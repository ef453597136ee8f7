"""A name -> network-class registry (timm style) that each network module fills with :func:`register_network`."""

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


def registered_networks() -> list[str]:
    """Sorted names registered so far (import :mod:`networks.nets` first to have every network)."""
    return sorted(_REGISTRY)


def get_network_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; unknown names raise and list the registered ones."""
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown network {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]
