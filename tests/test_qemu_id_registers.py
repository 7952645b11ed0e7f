"""A CPU-model difference the guest differential clears (tests/guest_differential.py, the "mrs id" form).

A protected guest's ID_AA64PFR0_EL1 read traps to EL2 (HCR_EL2.TID3) and hyp answers from the CPU's own register,
sanitised (firmware/sys_regs.c, pvm_read_id_reg).  The lab's Unicorn Cortex-A72 implements EL3; QEMU's ``virt``
machine, as the lab starts it, has none: the EL3 field (bits [15:12]) is 1 on one and 0 on the other, and only it.
"""

from __future__ import annotations

from guest_differential import GuestProgram, run_program
from test_qemu_differential import require_qemu

from pkvmlab import Lab


def test_the_guests_id_aa64pfr0_differs_between_the_cpus_in_the_el3_field_only():
    require_qemu()
    prog = GuestProgram(0, 0)
    code = (0xD5380401 | 0).to_bytes(4, "little")   # mrs x1, id_aa64pfr0_el1
    image = bytearray(prog.image)
    at = len(image) - 20                            # before the SYSTEM_OFF call's movz/movk/hvc
    prog.image = bytes(image[:at]) + code + bytes(image[at:])
    seen = []
    for backend in ("unicorn", "qemu"):
        with Lab(backend=backend) as lab:
            r = run_program(lab, prog)
            assert r["ended"] == "system off"
            seen.append(r["vcpu"]["x1"])
    u, q = seen
    assert (u >> 12) & 0xF == 1 and (q >> 12) & 0xF == 0, (hex(u), hex(q))
    assert u & ~0xF000 == q & ~0xF000, (hex(u), hex(q))
