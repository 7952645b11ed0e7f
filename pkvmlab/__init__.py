"""pkvmlab: run pKVM's protection model on an emulated ARMv8-A core, and look inside EL2.

    from pkvmlab import Lab
    lab = Lab()            # builds (cached) and boots the firmware; you are the host at EL1
    lab.host.hvc(...)      # a real HVC

``Lab`` is imported on first use, so ``pkvmlab.arch`` (pure facts) loads without the emulator.
"""

from pkvmlab.errors import (
    FirmwareBuildError,
    HostAccessFault,
    HostException,
    HypercallError,
    HypPanic,
    MachineError,
    PkvmLabError,
    SpecMismatch,
    UsageError,
)

__all__ = ["FirmwareBuildError", "HostAccessFault", "HostException", "HypPanic", "HypercallError", "Lab", "MachineError",
           "PkvmLabError", "SpecMismatch", "UsageError"]


def __getattr__(name: str):
    if name == "Lab":
        from pkvmlab.lab import Lab

        return Lab
    raise AttributeError(f"module 'pkvmlab' has no attribute {name!r}")
