"""A work queue of object keys, as controller-runtime has: each key waits once, is worked on by one
worker at a time, and may be asked for again at a later time (a deadline, the drift cadence).

Why not one kopf handler per event: a change of a child or of a ModelVersion must reconcile *another*
object, several events for one object must collapse into one reconcile, and two workers must never
reconcile the same object at once (two runs started under one number). A key added while it is being
worked on is worked on again right after, so no change is lost.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from typing import Hashable


class WorkQueue:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: collections.deque[Hashable] = collections.deque()  # keys to hand out, oldest first
        self._waiting: dict[Hashable, float] = {}  # key -> when it was first added and not yet handed out
        self._active: set[Hashable] = set()
        self._again: set[Hashable] = set()  # added while active: back in the queue when done
        self._later: list[tuple[float, int, Hashable]] = []  # (due, tie-breaker, key)
        self._due: dict[Hashable, float] = {}  # the earliest due time asked for each key
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Hashable) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting[key] = self._clock()
            self._ready.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Adds the key once `delay` seconds have passed; an earlier request for the same key wins."""
        if delay <= 0:
            return self.add(key)
        due = self._clock() + delay
        with self._cond:
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._later, (due, next(self._seq), key))
            self._cond.notify()

    def _promote_due(self) -> float | None:
        """Moves keys whose time has come into the queue; returns the seconds until the next one."""
        now = self._clock()
        while self._later:
            due, _, key = self._later[0]
            if self._due.get(key) != due:  # superseded by an earlier request for the same key
                heapq.heappop(self._later)
                continue
            if due > now:
                return due - now
            heapq.heappop(self._later)
            del self._due[key]
            self._add(key)
        return None

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to work on (it is then active until `done`), or None after `timeout` or `close`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                wait = self._promote_due()
                if self._closed:
                    return None
                if self._ready:
                    key = self._ready.popleft()
                    del self._waiting[key]
                    self._active.add(key)
                    return key
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cond:
            self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._add(key)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def depth(self) -> int:
        with self._cond:
            return len(self._ready)

    def oldest_wait(self) -> float:
        """Seconds the longest-waiting key has waited for a worker (0 when none waits)."""
        with self._cond:
            return self._clock() - min(self._waiting.values()) if self._waiting else 0.0
