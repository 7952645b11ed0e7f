"""One background thread that stops a run that takes too long, so a looping firmware never hangs a notebook.

Unicorn's own ``emu_start(timeout=…)`` starts a thread per call (about 240 us here, 50 times a bare run);
this watchdog is armed and disarmed with a lock and a dict entry instead.  ``emu_start`` releases the GIL
(ctypes), so the thread can call ``emu_stop`` while the core runs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

_POLL_S = 0.05


class Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, Callable[[], object]]] = {}
        self._fired: set[int] = set()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    def arm(self, stop: Callable[[], object], seconds: float) -> int:
        """Call ``stop()`` if ``disarm(token)`` has not come within ``seconds``."""
        token = next(self._ids)
        with self._lock:
            self._armed[token] = (time.monotonic() + seconds, stop)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pkvmlab-watchdog", daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True if the watchdog had already stopped this run."""
        with self._lock:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _loop(self) -> None:
        while True:
            time.sleep(_POLL_S)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, stop) in list(self._armed.items()):
                    if now >= deadline:
                        del self._armed[token]
                        self._fired.add(token)
                        stop()


WATCHDOG = Watchdog()
