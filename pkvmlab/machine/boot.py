"""The boot loader: put the firmware image in RAM and start it at EL2 until it ERETs to the host.

Boot arguments (firmware/entry.S): x0 = RAM base, x1 = RAM size, x2 = the hypervisor's carve-out
size (from the start of RAM), x3 = where the host starts at EL1.
"""

from __future__ import annotations

from pkvmlab.arch import pstate as P
from pkvmlab.errors import UsageError
from pkvmlab.firmware.elf import Firmware
from pkvmlab.machine.interface import HandVectored


def load_image(core: HandVectored, fw: Firmware) -> None:
    """Copy every loadable segment to its physical address (debugger path: nothing runs yet)."""
    for seg in fw.segments:
        core.phys.write(seg.paddr, seg.data)
        if seg.memsz > len(seg.data):
            core.phys.write(seg.paddr + len(seg.data), bytes(seg.memsz - len(seg.data)))
    core.symbols = dict(fw.symbols)


def boot(core: HandVectored, fw: Firmware, *, hyp_size: int, host_entry: int, timeout_ms: int = 5000) -> None:
    """Run the firmware from its entry point at EL2h until it drops to the host at ``host_entry``."""
    if fw.entry != core.ram_base:
        raise UsageError(f"the firmware is linked at {fw.entry:#x} but RAM starts at {core.ram_base:#x}")
    if hyp_size % (2 << 20) or not 0 < hyp_size < core.ram_size:
        raise UsageError("the hypervisor carve-out must be a multiple of 2 MiB inside RAM")
    load_image(core, fw)
    core.set_pstate(P.PSTATE_EL2H_DAIF)
    for i, v in enumerate((core.ram_base, core.ram_size, hyp_size, host_entry)):
        core.x[i] = v
    core.run(fw.entry, host_entry, timeout_ms=timeout_ms)
