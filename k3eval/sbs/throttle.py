"""A growing delay after refused sign-ins, per browser session and per client address.

The annotation app asks `wait()` before it checks a token and tells `refused()` / `accepted()` the outcome. A few
refusals are free (a mistyped token); after that each refusal doubles the time before the next attempt is checked,
up to `max_s`. Attempts during the wait are turned away without looking at the token, so guessing tokens costs time
whatever the attacker does, and the database is not touched. A key forgets its refusals after `forget_s` without
one; a successful sign-in clears the session's count (not the address's: one valid token must not reset the count
of a whole network). The counts live in the server's memory: they reset when the server restarts.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Free refusals per kind of key before the delay starts: a person mistypes a token a few times; an address may be a
# whole lab behind one router.
FREE_REFUSALS = {"session": 3, "address": 20}


@dataclass
class _Count:
    refusals: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class SignInThrottle:
    """Refusal counts and waits for keys such as ('session', id) and ('address', '10.0.0.7'); thread-safe."""

    def __init__(self, free: dict[str, int] | None = None, base_s: float = 1.0, max_s: float = 300.0,
                 forget_s: float = 3600.0, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self.free = dict(FREE_REFUSALS if free is None else free)
        self.base_s, self.max_s, self.forget_s, self.max_keys = base_s, max_s, forget_s, max_keys
        self._clock = clock
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, keys: Iterable[tuple[str, str]]) -> float:
        """Seconds until an attempt from these keys will be checked (0: now)."""
        now = self._clock()
        with self._lock:
            return max([self._current(k, now).blocked_until - now for k in keys] + [0.0])

    def refused(self, keys: Iterable[tuple[str, str]]) -> float:
        """Count a refused attempt for every key; returns the wait it sets (s)."""
        now = self._clock()
        waits = [0.0]
        with self._lock:
            for key in keys:
                c = self._current(key, now)
                c.refusals += 1
                c.last = now
                over = c.refusals - self.free.get(key[0], 0)
                delay = min(self.base_s * 2 ** (over - 1), self.max_s) if over > 0 else 0.0
                c.blocked_until = now + delay
                waits.append(delay)
                self._counts[key] = c
                self._counts.move_to_end(key)
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
        return max(waits)

    def accepted(self, keys: Iterable[tuple[str, str]]) -> None:
        """A token was accepted: the session's count starts again."""
        with self._lock:
            for key in keys:
                if key[0] == "session":
                    self._counts.pop(key, None)

    def _current(self, key: tuple[str, str], now: float) -> _Count:
        c = self._counts.get(key)
        if c is None or now - c.last > self.forget_s:
            return _Count()
        return c


__all__ = ["FREE_REFUSALS", "SignInThrottle"]
