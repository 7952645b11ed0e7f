"""One background thread that stops a run that takes too long, so a looping firmware never hangs a notebook.

Unicorn's own ``emu_start(timeout=…)`` starts a thread per call (about 240 us here, 50 times a bare run);
this watchdog is armed and disarmed with one dict entry instead.  ``emu_start`` releases the GIL
(ctypes), so the thread can call ``emu_stop`` while the core runs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

_POLL_S = 0.05


class Watchdog:
    """Arm before a run, disarm after it; a run still armed past its deadline is stopped.

    ``arm`` takes no lock (a dict store is atomic under the GIL).  Firing and ``disarm`` share one lock, so
    once ``disarm`` has returned no stop meant for that run can arrive late and cut short the *next* run
    (which could then stop half-way through a hypercall at EL2).
    """

    def __init__(self) -> None:
        self._armed: dict[int, tuple[float, Callable[[], object]]] = {}
        self._fired: set[int] = set()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._fire_lock = threading.Lock()

    def arm(self, stop: Callable[[], object], seconds: float) -> int:
        """Call ``stop()`` if ``disarm(token)`` has not come within ``seconds`` (up to one poll, 50 ms, later).

        On every hypercall's path: one dict store, no clock read (the thread stamps the deadline when it
        first sees the token).
        """
        token = next(self._ids)
        self._armed[token] = (seconds, stop)
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="pkvmlab-watchdog", daemon=True)
                    self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True if the watchdog had already stopped this run.

        The usual case takes no lock: a dict pop is atomic under the GIL, and the thread fires only a token
        it popped itself, so a token popped here is never fired.
        """
        if self._armed.pop(token, None) is not None:
            return False
        with self._fire_lock:   # the thread popped it: wait for its stop() to finish before the next run
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _loop(self) -> None:
        deadlines: dict[int, float] = {}   # token -> when it fires, from when this thread first saw it armed
        while True:
            time.sleep(_POLL_S)
            now = time.monotonic()
            armed = dict(self._armed)
            for token in [t for t in deadlines if t not in armed]:
                del deadlines[token]
            for token, (seconds, stop) in armed.items():
                if now >= deadlines.setdefault(token, now + seconds):
                    with self._fire_lock:
                        if self._armed.pop(token, None) is not None:
                            self._fired.add(token)
                            stop()
                    del deadlines[token]


WATCHDOG = Watchdog()
