"""How many downloads run at once: a window that suits the server's latency (plain Python, no Dagster).

A download waits for the server's answer (its headers) and then reads the body. When the finished
downloads spent most of their time waiting, the server is far away or slow to answer, and more
connections at once get more done: the window doubles, up to its cap. When they spent it reading,
hashing and writing, more connections only compete for the same bytes and CPU: the window stays.
When the server pushes back (429, 503, refused connections, timeouts) the window halves,
once for a burst: a download that started before the last change of the window does not halve it
again. After a cut, a window's worth of downloads without push-back brings it back up towards
where it started, whatever they waited for.

A decision is taken once a window's worth of successful downloads has finished since the last
change, so the window reaches its cap in a few round trips (16, 32, 64) and never moves on one odd
answer. Failed downloads (a 404, a 500) say nothing about the latency and are not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["WAITING_SHARE", "Window"]

#: The share of the finished downloads' time spent waiting for the server above which the window grows.
WAITING_SHARE = 0.5


class Window:
    """A limit on downloads at once, between 1 and ``cap``, starting at ``start``. Thread-safe."""

    def __init__(self, start: int, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self.start = self.limit = max(1, min(start, cap))
        self.most_running = 0  # the most downloads that ran at once (reported in the asset's metadata)
        self._running = 0
        self._closed = False
        self._epoch = 0  # bumped at every change of the limit
        self._cond = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        self._finished = 0
        self._waited_s = 0.0
        self._total_s = 0.0

    def _set(self, limit: int) -> None:
        self.limit = limit
        self._epoch += 1
        self._reset()
        self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[int | None]:
        """Hold one of the window's places while a download runs (blocks while the window is full).

        Yields the window's epoch, to hand to :meth:`finished`; None, holding nothing, once the
        window is closed: start no download then.
        """
        with self._cond:
            while self._running >= self.limit and not self._closed:
                self._cond.wait()
            if self._closed:
                epoch = None
            else:
                epoch = self._epoch
                self._running += 1
                self.most_running = max(self.most_running, self._running)
        try:
            yield epoch
        finally:
            if epoch is not None:
                with self._cond:
                    self._running -= 1
                    self._cond.notify()

    def close(self) -> None:
        """No more downloads: whoever waits for a place is told to start none (the run is being stopped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def finished(self, epoch: int, waited_s: float, total_s: float, *, ok: bool, pushed_back: bool) -> None:
        """One download's outcome: the epoch it started in, its times (waiting for answers, in all),
        whether it succeeded and whether the server pushed back."""
        with self._cond:
            if pushed_back:
                if epoch == self._epoch:  # one cut a burst: the downloads already under way do not cut again
                    self._set(max(1, self.limit // 2))
                return
            if not ok:
                return
            self._finished += 1
            self._waited_s += waited_s
            self._total_s += total_s
            if self._finished < self.limit:
                return
            if self.limit < self.start or (self.limit < self.cap and self._waited_s > WAITING_SHARE * self._total_s):
                self._set(min(self.cap, 2 * self.limit))
            else:
                self._reset()
