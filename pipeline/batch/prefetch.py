"""Bounded background loading: prepare the next items in worker threads while the caller works on the current one."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Prefetched", "prefetch"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Prefetched(Generic[T, R]):
    """One item and what loading it gave: ``value`` or the ``error`` it raised (never both)."""

    item: T
    value: R | None = None
    error: BaseException | None = None
    seconds: float = 0.0


def _timed(load: Callable[[T], R], item: T) -> tuple[R, float]:
    start = time.perf_counter()
    value = load(item)
    return value, time.perf_counter() - start


def prefetch(
    items: Iterable[T], load: Callable[[T], R], *, ahead: int = 1, workers: int = 1
) -> Iterator[Prefetched[T, R]]:
    """Yield ``Prefetched(item, load(item))`` in input order, loading up to ``ahead`` items beyond the current one.

    Loading runs in ``workers`` threads (NumPy, zlib, pydicom decoders and torch release the GIL), so the next
    cases are read and resampled while the model runs. At most ``ahead + 1`` results exist at once, which
    bounds memory. An exception raised while loading an item is returned with that item, not raised, so it is
    attributed to the right case. ``ahead=0`` loads in the caller's thread (no background work).

    Args:
        items: what to load, e.g. cases.
        load: item -> loaded value.
        ahead: items loaded in advance (>= 0).
        workers: loading threads (>= 1) when ``ahead > 0``.
    """
    if ahead < 0 or workers < 1:
        raise ValueError(f"prefetch needs ahead >= 0 and workers >= 1, got ahead={ahead}, workers={workers}")
    if ahead == 0:
        for item in items:
            try:
                value, seconds = _timed(load, item)
            except Exception as e:  # noqa: BLE001 - attributed to the item; the caller decides
                yield Prefetched(item, error=e)
            else:
                yield Prefetched(item, value, seconds=seconds)
        return
    iterator = iter(items)
    pending: collections.deque[tuple[T, Future]] = collections.deque()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    try:
        for item in iterator:
            pending.append((item, executor.submit(_timed, load, item)))
            if len(pending) > ahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        for _, future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def _result(item: T, future: Future) -> Prefetched:
    error = future.exception()
    if error is not None:
        return Prefetched(item, error=error)
    value, seconds = future.result()
    return Prefetched(item, value, seconds=seconds)
