"""pkvmlab: run pKVM's protection model on an emulated ARMv8-A core, and look inside EL2.

    from pkvmlab import Lab
    lab = Lab()            # builds (cached) and boots the firmware; you are the host at EL1
    lab.host.hvc(...)      # a real HVC
"""

from pkvmlab.errors import (
                            FirmwareBuildError,
                            HostAccessFault,
                            HypercallError,
                            HypPanic,
                            MachineError,
                            PkvmLabError,
                            UsageError,
)
from pkvmlab.lab import Lab

__all__ = ["FirmwareBuildError", "HostAccessFault", "HypPanic", "HypercallError", "Lab", "MachineError",
           "PkvmLabError", "UsageError"]
