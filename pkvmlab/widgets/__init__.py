"""ipywidgets dashboards over a running lab: ``VMBuilder(lab)`` and ``TranslationExplorer(lab)``.

They only call the public API (``lab.host``, ``lab.hyp``, ``pkvmlab.viz``) and draw what it returns;
shared drawing code lives in ``pkvmlab.widgets.render`` (a running guest's console and exit log:
``pkvmlab.widgets.guest_panes``; which host pages the builder's tiles show: ``pkvmlab.widgets.host_ram``).
"""

from __future__ import annotations

__all__ = ["TranslationExplorer", "VMBuilder"]


def __getattr__(name: str):
    if name == "VMBuilder":
        from pkvmlab.widgets.vm_builder import VMBuilder

        return VMBuilder
    if name == "TranslationExplorer":
        from pkvmlab.widgets.translation import TranslationExplorer

        return TranslationExplorer
    raise AttributeError(f"module 'pkvmlab.widgets' has no attribute {name!r}")
