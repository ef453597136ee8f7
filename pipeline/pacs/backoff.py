"""When to try a failed push again: exponential back-off per series, so a down archive is not asked every poll.

The first retry waits ``first`` seconds, each later one twice as long, up to ``longest``; a success forgets the
series. Times are this process's clock (``time.monotonic``): a restarted node retries at once.
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Retry times of failed pushes, by series key.

    Args:
        first: seconds before the first retry.
        longest: the longest wait between two tries.
    """

    def __init__(self, first: float = 10.0, longest: float = 600.0) -> None:
        if not 0 < first <= longest:
            raise ValueError(f"back-off needs 0 < first <= longest, got first={first}, longest={longest}")
        self.first, self.longest = first, longest
        self._next: dict[str, tuple[int, float]] = {}  # key -> (failures so far, when the next try is due)

    def due(self, key: str, now: float) -> bool:
        """Whether ``key``'s push may be tried at ``now`` (always, for a series that has not failed)."""
        return key not in self._next or now >= self._next[key][1]

    def failed(self, key: str, now: float) -> float:
        """Record a failed try at ``now``; returns the seconds until the next."""
        failures = self._next.get(key, (0, now))[0] + 1
        wait = min(self.first * 2 ** (failures - 1), self.longest)
        self._next[key] = (failures, now + wait)
        return wait

    def succeeded(self, key: str) -> None:
        """``key`` was pushed: forget its failures."""
        self._next.pop(key, None)
