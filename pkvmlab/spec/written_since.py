"""Which pages were written since each reader of an abstraction last asked: the bookkeeping both eras' abstractions
share (:class:`pkvmlab.spec.abstraction.Abstraction`, :class:`pkvmlab.spec.mainline_abstraction.MainlineAbstraction`).

Each keeps ``written`` (None, or a :class:`pkvmlab.machine.journal.WrittenPages`'s ``take``, set by the checker) and
``_since`` (reader -> the pfns written since it last asked); each reader (the whole state, the light VMs, a local
read, the AT answers) asks ``taken(reader)`` and reads again only what lies on those pages.
"""

from __future__ import annotations


class WrittenSince:
    """``taken``: the method both abstractions share (see the module docstring)."""

    def taken(self, reader: str) -> set | None:
        """The pfns written since ``reader`` last asked (None: read everything): ``self.written``'s pages, kept for
        each reader (the whole state, the light VMs) until it asks."""
        if self.written is None:
            self._since = {}
            return None
        new = self.written()
        if new is None:
            self._since = dict.fromkeys(self._since)
        elif new:
            for got in self._since.values():
                if got is not None:
                    got |= new   # each reader's own set (a new one each time it asks)
        out = self._since.get(reader)
        self._since[reader] = set()
        return out
