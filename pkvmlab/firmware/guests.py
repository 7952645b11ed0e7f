"""The protected guests' programs: small freestanding EL1 programs in ``firmware/guests/``.

Each one is position-independent A64 assembly, run with its stage-1 MMU off (VA = IPA) from IPA 0,
its stack at the top of its memory.  They are assembled by the same ``zig cc`` as the firmware
(``pkvmlab.firmware.asm``, cached by content hash).
"""

from __future__ import annotations

from functools import lru_cache

from pkvmlab.errors import UsageError
from pkvmlab.firmware.build import FIRMWARE_DIR

GUESTS_DIR = FIRMWARE_DIR / "guests"


def guest_names() -> list[str]:
    return sorted(p.stem for p in GUESTS_DIR.glob("*.S"))


@lru_cache(maxsize=32)
def _image(name: str, source: str) -> bytes:
    from pkvmlab.firmware.asm import assemble

    return assemble(source)


def guest_image(name: str) -> bytes:
    """The machine code of guest ``name`` (``firmware/guests/<name>.S``), to load at IPA 0."""
    path = GUESTS_DIR / f"{name}.S"
    if not isinstance(name, str) or not path.is_file():
        raise UsageError(f"unknown guest {name!r}; the lab's guests: {', '.join(guest_names())}")
    return _image(name, path.read_text())


def guest_source(name: str) -> str:
    guest_image(name)
    return (GUESTS_DIR / f"{name}.S").read_text()
