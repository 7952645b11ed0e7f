"""``Picture``: a matplotlib ``Figure`` that Jupyter shows as an image wherever it is displayed.

A Figure built without pyplot (so no GUI backend is ever touched) has no image renderer in IPython
unless the inline backend happens to be active: JupyterLab, nbconvert and the stored notebooks then
show ``<Figure size 1000x960 with 2 Axes>``.  ``_repr_png_`` draws it with the Agg canvas every time,
and the text form names what it draws, not its size.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 100   # 10 inches -> 1,000 px: the width of a notebook column at 100 % zoom


class Picture(Figure):
    """A Figure with a PNG form for Jupyter and a one-line text form naming its subject."""

    def __init__(self, *args, name: str = "picture", **kw):
        super().__init__(*args, **kw)
        self.name = name

    def png(self, dpi: int = DPI) -> bytes:
        """PNG bytes (metadata stripped so the bytes depend only on the picture)."""
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        return buf.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        return f"<{self.name}>"
