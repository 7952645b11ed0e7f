"""Running a protected guest, as the host kernel does it: ``KVM_RUN`` on pKVM.

One step (``VM.step()``) is what the host's ``kvm_arch_vcpu_ioctl_run`` does for a protected vCPU:

1. ``__pkvm_vcpu_load(handle, vcpu_idx)`` makes the vCPU this CPU's (upstream: ``kvm_arch_vcpu_load``
   -> ``pkvm_vcpu_load``; hyp takes a reference on the VM, so teardown now answers -EBUSY);
2. the answer to the previous exit goes into the host's own ``struct kvm_vcpu`` (an MMIO read's value in
   ``regs[0]``, ``KVM_ARM64_INCREMENT_PC`` in ``arch.flags``): hyp copies what it needs into its shadow
   (``flush_shadow_state``);
3. ``__kvm_vcpu_run()``: hyp switches to the guest and comes back with an exit code;
4. the host reads what hyp chose to tell it (``handle_pvm_exit_*``): ESR with the register number masked,
   FAR's page offset, HPFAR, an MMIO write's value in ``regs[0]``, a hypercall's x0 (x0..x3 for MEM_SHARE,
   MEM_UNSHARE and the lab's doorbell); nothing else;
5. it handles the exit: a fault inside the guest's memory gets a page (``__pkvm_host_map_guest``, after a
   top-up of the vCPU's memcache when hyp says -ENOMEM); one outside it is MMIO, and the host emulates a
   small UART (PL011's data register at ``UART_BASE``); the guest's MEM_SHARE / MEM_UNSHARE, done at EL2
   already, exit so the host learns of them ("Success! Now tell the host.": pkvm_memshare_call() in
   nvhe/pkvm.c, v1 series and Android 2022) -- the host notes the IPA, and hyp gives the guest its x0 itself;
   a share of a page the guest has not been given yet reaches the host as a *page request*, a stage-2 fault
   hyp fakes at that IPA (``__pkvm_memshare_page_req``), which the host serves like any other, and the HVC
   runs again; any other hypercall hyp did not handle gets NOT_SUPPORTED, except PSCI ``SYSTEM_OFF``;
6. ``__pkvm_vcpu_put()``.

Steps 2 to 4 are one host stub (``kernel_image.VCPU_RUN``: the stores of the answer, ``hvc #0``, the loads
of the exit), run in one native call: still the host's own EL1 instructions on its own ``struct kvm_vcpu``,
just not one Python round trip each.  While something watches the host's calls (a Timeline, the
specification checker), each store, the hypercall and each load are made one by one instead.  ``VM.run()``
loads the vCPU once for its whole loop, as a vCPU thread stays scheduled in.

The run's instruction budget is the lab's timer: when it is spent while the guest runs, the vCPU exits
as a timer interrupt would make it (an IRQ taken to EL2, ``HCR_EL2.IMO``).  It is counted in whole
translated blocks, so the same guest with the same budget always stops at the same PC.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from pkvmlab.arch import esr as E
from pkvmlab.errors import HypercallError, UsageError
from pkvmlab.host import kernel_image as K

PAGE = 4096
GUEST_MEM_SIZE = 1 << 20          # the guest's memory: IPA [0, 1 MiB); anything else is MMIO
UART_BASE = 0x0900_0000           # a PL011-like UART's data register (as on QEMU's "virt" board)
UART_FR = UART_BASE + 0x18        # its flag register: reads 0 (never busy)
DEFAULT_BUDGET = 100_000          # instructions per run before the "timer" fires
PSCI_SYSTEM_OFF = 0x8400_0008
MEM_SHARE, MEM_UNSHARE = 0xC600_0003, 0xC600_0004   # ARM_SMCCC_VENDOR_HYP_KVM_MEM_{SHARE,UNSHARE}_FUNC_ID
SMCCC_RET_NOT_SUPPORTED = (1 << 64) - 1
ARM_EXCEPTION_IRQ, ARM_EXCEPTION_TRAP = 0, 2
KVM_ARM64_INCREMENT_PC = 1 << 9
HPFAR_FIPA_MASK = ((1 << 40) - 1) & ~0xF
MEMCACHE_TOPUP = 2                # kvm_mmu_cache_min_pages(): a table per level below the PGD
VCPU_FIELDS = ("arch.ctxt.regs.regs", "arch.ctxt.regs.pc", "arch.ctxt.sp_el1", "arch.fault.esr_el2",
               "arch.fault.far_el2", "arch.fault.hpfar_el2", "arch.flags", "arch.pkvm_memcache.head",
               "arch.pkvm_memcache.nr_pages")


@dataclass(frozen=True)
class MmioAccess:
    """One guest access the host emulated: where, how wide, which way, and the value."""

    ipa: int
    size: int
    write: bool
    value: int

    def __str__(self) -> str:
        return f"{'write' if self.write else 'read'} of {self.size} byte(s) at IPA {self.ipa:#x}: {self.value:#x}"


@dataclass(frozen=True)
class Exit:
    """One exit of a protected vCPU, as the host saw it."""

    reason: str                      # "mmio", "page fault", "mem share", "mem unshare", "hypercall", "system off",
                                     # "wfx", "smc", "preempted"
    exit_code: int                   # ARM_EXCEPTION_TRAP or ARM_EXCEPTION_IRQ
    esr: int | None = None           # what hyp let the host see of ESR_EL2
    ipa: int | None = None           # from HPFAR_EL2 and FAR_EL2's page offset
    mmio: MmioAccess | None = None
    hvc: tuple[int, int, int, int] | None = None   # x0..x3 of a hypercall hyp passed on
    pc: int | None = None            # a preemption's guest PC (the lab's timer knows it; the host does not)
    handled: str = ""                # what the host did about it

    @property
    def esr_words(self) -> str:
        return E.decode(self.esr).words() if self.esr is not None else ""

    def __str__(self) -> str:
        parts = [self.reason]
        if self.mmio is not None:
            parts.append(str(self.mmio))
        elif self.ipa is not None:
            parts.append(f"IPA {self.ipa:#x}")
        if self.hvc is not None:
            parts.append(f"x0={self.hvc[0]:#x}")
        if self.pc is not None:
            parts.append(f"at guest PC {self.pc:#x}")
        if self.esr is not None:
            parts.append(f"ESR {self.esr:#x} ({self.esr_words})")
        if self.handled:
            parts.append(f"-> {self.handled}")
        return parts[0] + (": " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def vcpu_offsets(fw) -> dict[str, int]:
    lay = fw.layout("kvm_vcpu")
    return {p: lay.field(p).offset for p in VCPU_FIELDS}


class VcpuRunner:
    """The host's side of running vCPU ``vcpu_idx`` of ``vm``: its KVM_RUN loop."""

    def __init__(self, vm, vcpu_idx: int = 0):
        self.vm, self.host, self.idx = vm, vm.host, vcpu_idx
        self.vcpu = vm.vcpus[vcpu_idx]
        self.off = vcpu_offsets(self.host.fw)
        esr_at = self.off["arch.fault.esr_el2"]
        if (self.off["arch.fault.far_el2"], self.off["arch.fault.hpfar_el2"]) != (esr_at + 8, esr_at + 16):
            raise UsageError("struct kvm_vcpu_fault_info is not esr_el2, far_el2, hpfar_el2 in a row: "
                             "kernel_image.VCPU_RUN reads them with one ldp and one ldr")
        self._run_at = (self._field("arch.ctxt.regs.regs", 0), self._field("arch.flags"), esr_at + self.vcpu)
        self._answer: tuple[int | None, bool] | None = None   # (regs[n] value or None, increment PC)
        self._answer_reg = 0   # n: x0, hyp's transfer register for a protected vCPU; a non-protected one's own Rt
        self.exits: list[Exit] = []

    def _field(self, name: str, index: int = 0) -> int:
        return self.vcpu + self.off[name] + 8 * index

    # -- what the host writes into its own struct kvm_vcpu ---------------------------------
    def set_entry(self, pc: int, sp_el1: int) -> None:
        """The guest's entry PC and stack, in the host's struct kvm_vcpu: hyp reads them once, at the first load."""
        self.host.write_u64(self._field("arch.ctxt.regs.pc"), pc)
        self.host.write_u64(self._field("arch.ctxt.sp_el1"), sp_el1)

    def topup_memcache(self, nr_pages: int = MEMCACHE_TOPUP) -> None:
        """``topup_hyp_memcache()``: push host pages on the vCPU's memcache list (a page's first word links on)."""
        head_at, nr_at = self._field("arch.pkvm_memcache.head"), self._field("arch.pkvm_memcache.nr_pages")
        head, nr = self.host.read_u64(head_at), self.host.read_u64(nr_at)
        for _ in range(nr_pages):
            pfn = self.host.alloc_pages(1)
            self.host.write_u64(pfn * PAGE, head)
            head, nr = pfn * PAGE, nr + 1
            self.vm.memcache_pages.append(pfn)
        self.host.write_u64(head_at, head)
        self.host.write_u64(nr_at, nr)

    def map_guest(self, gfn: int) -> int:
        """Give the guest a page at ``gfn`` (its image's bytes there, else zeros), topping up the memcache on -ENOMEM."""
        pfn = self.host.alloc_pages(1)
        image = self.vm.image
        content = image[gfn * PAGE:(gfn + 1) * PAGE]
        self.host.write(pfn * PAGE, content + bytes(PAGE - len(content)))
        for attempt in range(3):
            try:
                self.vm.map_call(pfn, gfn)
                break
            except HypercallError as e:
                if e.errno != _errno.ENOMEM or attempt == 2:
                    self.host.free_pages(pfn)
                    raise
                self.topup_memcache()
        self.vm.mapped_pages[gfn] = pfn
        return pfn

    # -- one KVM_RUN step -------------------------------------------------------------------
    def load(self) -> None:
        """``__pkvm_vcpu_load``: as the host does when it schedules the vCPU in (kvm_arch_vcpu_load)."""
        self.host.call("__pkvm_vcpu_load", self.vm.handle, self.idx)
        self.loaded = self.ever_loaded = True

    def put(self) -> None:
        self.loaded = False
        self.host.call("__pkvm_vcpu_put")

    loaded = False
    ever_loaded = False   # hyp reads the entry PC and stack at the first load; after it only hyp's copy counts

    def step(self, budget: int = DEFAULT_BUDGET) -> Exit:
        """One run and the handling of its exit; loads and puts the vCPU around it unless it is loaded already."""
        if self.loaded:
            return self._step(budget)
        self.load()
        try:
            return self._step(budget)
        finally:
            self.put()

    def _step(self, budget: int) -> Exit:
        host, core = self.host, self.host.core
        if budget:
            core.set_budget(budget)
        try:
            if self._wrapped(host):
                code, info = self._run_by_parts(), None
            else:
                code, info = self._run_in_one()
        finally:
            preempted_at = core.take_budget()[1] if budget else 0
        ex = self._handle(code, preempted_at, info)
        self.exits.append(ex)
        for listener in list(host.exit_listeners):
            listener(self.vm, ex)
        return ex

    @staticmethod
    def _wrapped(host) -> bool:
        """Something (a Timeline, the spec checker) watches the host's calls and accesses: make each one as itself."""
        d = host.__dict__
        return "call" in d or "read" in d or "read_u64" in d or "write_u64" in d

    def _run_by_parts(self) -> int:
        """The answer to the last exit with one store each, then ``__kvm_vcpu_run`` through ``host.call``."""
        host = self.host
        if self._answer is not None:
            value, incr = self._answer
            if value is not None:
                host.write_u64(self._field("arch.ctxt.regs.regs", self._answer_reg), value)
            if incr:
                host.write_u64(self._field("arch.flags"), KVM_ARM64_INCREMENT_PC)
            self._answer = None
        return host.call("__kvm_vcpu_run")

    def _run_in_one(self) -> tuple[int, tuple[int, ...]]:
        """The same stores, the HVC and the loads of the exit in one host stub (kernel_image.VCPU_RUN)."""
        host = self.host
        value, incr = self._answer if self._answer is not None else (None, False)
        self._answer = None
        regs0_at, flags_at, fault_at = self._run_at
        answer_at = regs0_at + 8 * self._answer_reg
        regs = [host.hypercalls["__kvm_vcpu_run"], 0, 0, 0, 0, 0, 0, 0, 0, 0 if value is None else answer_at, value or 0,
                flags_at if incr else 0, KVM_ARM64_INCREMENT_PC, fault_at, regs0_at]
        out = host.call_stub(K.VCPU_RUN, regs, 9, "hypercall __kvm_vcpu_run")
        return host._call_result("__kvm_vcpu_run", (), out[0], out[1]), tuple(out[2:])

    def _handle(self, code: int, preempted_at: int, info: tuple[int, ...] | None) -> Exit:
        host = self.host
        self._answer_reg = 0   # x0 unless an MMIO exit of a non-protected vCPU says otherwise (_mmio)
        if code == ARM_EXCEPTION_IRQ:
            return Exit("preempted", code, pc=preempted_at or None, handled="run again when the scheduler says so")
        if code != ARM_EXCEPTION_TRAP:
            raise UsageError(f"__kvm_vcpu_run returned exit code {code}, which the host model does not know")
        if info is None:   # read what hyp left in the host's struct kvm_vcpu: ESR, FAR, HPFAR, then regs[0..3]
            fault = self._field("arch.fault.esr_el2")
            block = fault & ~63   # the fault info in one or two 64-byte loads, not one per field
            raw = host.read(block, (fault + 24 - block + 63) & ~63)
            esr, far, hpfar = (int.from_bytes(raw[fault - block + 8 * i:fault - block + 8 * i + 8], "little")
                               for i in range(3))
            regs = None
        else:
            esr, far, hpfar, *regs = info
        ec = (esr >> 26) & 0x3F
        if ec == E.EC_HVC64:
            if regs is None:
                regs = [host.read_u64(self._field("arch.ctxt.regs.regs", i)) for i in range(4)]
            regs = tuple(regs)
            if regs[0] == PSCI_SYSTEM_OFF:
                self.vm.powered_off = True
                return Exit("system off", code, esr=esr, hvc=regs, handled="the guest is off")
            if regs[0] in (MEM_SHARE, MEM_UNSHARE):   # done at EL2; hyp sets the guest's x0 (handle_pvm_entry_hvc64)
                share = regs[0] == MEM_SHARE
                gfn = regs[1] // PAGE
                (self.vm.shared_gfns.add if share else self.vm.shared_gfns.discard)(gfn)
                return Exit("mem share" if share else "mem unshare", code, esr=esr, ipa=regs[1], hvc=regs,
                            handled=f"noted: gfn {gfn:#x} {'shared with' if share else 'no longer shared with'} "
                                    "the host")
            self._answer = (SMCCC_RET_NOT_SUPPORTED, False)
            return Exit("hypercall", code, esr=esr, hvc=regs, handled="not supported (x0 = -1)")
        if ec == E.EC_WFX:   # KVM's kvm_handle_wfx(): block until an interrupt (none here), then step over it
            self._answer = (None, True)
            kind = "WFE" if esr & 1 else "WFI"
            return Exit("wfx", code, esr=esr, handled=f"{kind}: nothing to wait for; stepped over")
        if ec == E.EC_SMC64:   # KVM's handle_smc(): step over it, x0 = the SMCCC answer (no firmware here)
            self._answer = (SMCCC_RET_NOT_SUPPORTED, True)
            return Exit("smc", code, esr=esr, handled="not supported (x0 = -1), stepped over")
        if ec in (E.EC_IABT_LOW, E.EC_DABT_LOW):
            # FAR: only its page offset reaches the host, and only for a data abort (hyp's handle_pvm_exit_iabt
            # passes ESR and HPFAR alone: an instruction abort's far_el2 is whatever an older exit left there)
            ipa = ((hpfar & HPFAR_FIPA_MASK) << 8) | (far & 0xFFF if ec == E.EC_DABT_LOW else 0)
            if ipa < GUEST_MEM_SIZE:
                pfn = self.map_guest(ipa // PAGE)
                return Exit("page fault", code, esr=esr, ipa=ipa, handled=f"mapped pfn {pfn:#x} at gfn {ipa // PAGE:#x}")
            return self._mmio(code, esr, ipa, None if regs is None else regs[0])
        return Exit("unhandled", code, esr=esr, handled="the host model does not handle this exit")

    def _mmio(self, code: int, esr: int, ipa: int, reg0: int | None) -> Exit:
        host = self.host
        if not esr & E.ISS_ISV:
            # No valid syndrome (a SIMD&FP register, a pair, a writeback form): no transfer register, so hyp handed
            # over no guest register and will write none back.  io_mem_abort() (torvalds/linux, arch/arm64/kvm/mmio.c,
            # the 2021 tree stored here) then exits to the VMM with KVM_EXIT_ARM_NISV if it enabled
            # KVM_CAP_ARM_NISV_TO_USER, and otherwise fails KVM_RUN with -ENOSYS: the host model stops here, without
            # answering.  (Later trees inject an external abort into a protected guest instead, kvm_inject_sea_dabt();
            # the lab's host has no way to inject one yet.)
            return Exit("unhandled", code, esr=esr, ipa=ipa,
                        handled="MMIO with no valid syndrome (ISV = 0): no transfer register to emulate it with; "
                                "KVM would exit to the VMM with KVM_EXIT_ARM_NISV (or fail KVM_RUN with -ENOSYS)")
        size = 1 << ((esr >> E.ISS_SAS_SHIFT) & 3)
        write = bool(esr & E.ISS_WNR)
        # A protected vCPU's transfer register is x0 (hyp moves the value; ESR.SRT reads 0).  A non-protected
        # vCPU (mainline era) hands the host its whole register file: the value is in the guest's own Rt, ESR.SRT,
        # as KVM's io_mem_abort() reads it (kvm_vcpu_dabt_get_rd(); arch/arm64/kvm/mmio.c).
        rt = 0 if getattr(self.vm, "protected", True) else (esr >> E.ISS_SRT_SHIFT) & 0x1F
        self._answer_reg = 0 if rt == 31 else rt
        if write:
            if rt == 31:
                reg0 = 0                                    # xzr
            elif rt or reg0 is None:
                reg0 = host.read_u64(self._field("arch.ctxt.regs.regs", rt))
            value = reg0 & ((1 << 8 * size) - 1)
            if ipa == UART_BASE:
                self.vm.console_bytes.append(value & 0xFF)
            self._answer = (None, True)
            handled = "UART: printed" if ipa == UART_BASE else "ignored (no device there)"
        else:
            value = 0   # UART_FR: never busy; nothing else is there either
            self._answer = (None if rt == 31 else value, True)
            handled = "read as 0"
        return Exit("mmio", code, esr=esr, ipa=ipa, mmio=MmioAccess(ipa, size, write, value), handled=handled)
