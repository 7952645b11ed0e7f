"""``python -m pkvmlab.firmware``: build the firmware (or find it in the cache) and say where it is."""

import sys
import time

from pkvmlab.errors import FirmwareBuildError
from pkvmlab.firmware.build import build_firmware

if __name__ == "__main__":
    t = time.perf_counter()
    try:
        elf = build_firmware()
    except FirmwareBuildError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    print(f"firmware: {elf} ({time.perf_counter() - t:.2f} s)")
