"""``python -m pkvmlab.firmware``: build the firmware and the guests (or find them in the cache), say where."""

import sys
import time

from pkvmlab.errors import FirmwareBuildError
from pkvmlab.firmware.build import build_firmware
from pkvmlab.firmware.guests import build_guest, guest_names

if __name__ == "__main__":
    t = time.perf_counter()
    try:
        elf = build_firmware()
        print(f"firmware: {elf} ({time.perf_counter() - t:.2f} s)")
        t = time.perf_counter()
        names = guest_names()
        for name in names:
            build_guest(name)
    except FirmwareBuildError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print(f"guests: {', '.join(names)} ({time.perf_counter() - t:.2f} s)")
