"""The host kernel model: it runs at EL1 and only ever acts through instructions on the core.

``hvc()`` executes a real ``HVC #0``; ``read()``/``write()`` execute real loads and stores, so the
host stage-2 applies and an access to memory the host gave away faults into the hypervisor, which
injects an abort back: that comes out as HostAccessFault.
"""

from __future__ import annotations

import struct

from pkvmlab.arch import esr as E
from pkvmlab.arch.hypercalls import hypercall_table
from pkvmlab.arch.smccc import SMCCC_RET_NOT_SUPPORTED, SMCCC_RET_SUCCESS
from pkvmlab.errors import HostAccessFault, HostException, HypercallError, MachineError, UsageError
from pkvmlab.firmware.elf import Firmware
from pkvmlab.host import kernel_image as K
from pkvmlab.host.page_alloc import PageAllocator
from pkvmlab.host.reasons import refusal_reason
from pkvmlab.machine.interface import HostVector, Machine
from pkvmlab.machine.phys import check_uint, serialised
from pkvmlab.rows import Registers

_ZEROS = [0] * 6
CPACR_EL1_FPEN = 3 << 20   # FP/SIMD at EL0 and EL1 not trapped
# Linux's INIT_SCTLR_EL1_MMU_OFF (arch/arm64/include/asm/sysreg.h, mainline): LSMAOE, nTLSMD, EIS, TSCXT, EOS
INIT_SCTLR_EL1_MMU_OFF = (1 << 29) | (1 << 28) | (1 << 22) | (1 << 20) | (1 << 11)
_BLOCK = struct.Struct("<8Q")   # the 64 bytes a LOAD_BLOCK / STORE_BLOCK stub moves in x1..x8
_ZERO_BLOCK = bytes(K.BLOCK)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


class Host:
    """What the host kernel does, as EL1 code on the core."""

    def __init__(self, core: Machine, image_base: int, fw: Firmware):
        self.core = core
        self.image_base = image_base
        self.fw = fw   # the firmware it runs on: struct kvm's layout comes from its DWARF
        self.era = fw.era   # "seed" or "mainline": which hypercall table, which way to make a VM
        self.hypercalls, self.hypercall_args = hypercall_table(self.era)
        self._hvc_begin, self._hvc_end = image_base + K.HVC, image_base + K.stub_end(K.HVC)
        self.log: list[tuple[str, tuple, int]] = []   # (call, args, result or -errno), newest last
        first_free = (image_base >> 12) + K.IMAGE_PAGES
        self.pages = PageAllocator(first_free, (core.ram_base + core.ram_size) >> 12)
        self.vms: dict[int, object] = {}   # handle -> VM, the VMs this host created and has not torn down
        self._code_page: int | None = None  # where execute() puts the host's own code
        self.changes = 0   # bumped by every hypercall and host access: views redraw when it moved (pkvmlab.widgets)
        self.loaded_vcpu: tuple[int, int] | None = None   # (handle, vcpu_idx) __pkvm_vcpu_load made this CPU's
        # Called as listener(vm, exit) after each guest exit the host handled (vcpu_run.py): display only, so a
        # dashboard can show a Run's exits as they come; never part of what the machine does or records.
        self.exit_listeners: list = []

    # -- the host's page allocator ---------------------------------------------------------
    @serialised
    def alloc_pages(self, nr_pages: int = 1, *, align: int = 1) -> int:
        """Allocate ``nr_pages`` contiguous host pages; returns the first pfn."""
        check_uint(nr_pages, 32, "nr_pages")
        check_uint(align, 32, "align")
        return self.pages.alloc_pages(nr_pages, align=align)

    @serialised
    def free_pages(self, pfn: int, nr_pages: int = 1) -> None:
        check_uint(pfn, 64, "pfn")
        check_uint(nr_pages, 32, "nr_pages")
        self.pages.free_pages(pfn, nr_pages)

    # -- the hypercalls, by pKVM's names (each raises HypercallError with the errno in words) --
    def hyp_info(self) -> tuple[int, int, int]:
        """``__pkvm_hyp_info``: (firmware version, CurrentEL the handler saw, free hyp pool pages)."""
        _, version, el, free = self.hvc(self.hypercalls["__pkvm_hyp_info"])
        return version, el, free

    def share_hyp(self, pfn: int) -> None:
        """``__pkvm_host_share_hyp``: host OWNED -> SHARED_OWNED, hyp NOPAGE -> SHARED_BORROWED."""
        self.call("__pkvm_host_share_hyp", pfn)

    def unshare_hyp(self, pfn: int) -> None:
        """``__pkvm_host_unshare_hyp``: the reverse; -EBUSY while hyp has the page pinned."""
        self.call("__pkvm_host_unshare_hyp", pfn)

    def _keep_own_image(self, pfn: int, nr_pages: int, call: str) -> None:
        """A host kernel never gives away its own text, vectors or stack: it could not run (or fault) again."""
        lo, hi = self.image_base >> 12, (self.image_base >> 12) + K.IMAGE_PAGES
        if isinstance(pfn, int) and isinstance(nr_pages, int) and 0 < nr_pages and pfn < hi and lo < pfn + nr_pages:
            raise UsageError(f"{call}({pfn:#x}, {nr_pages}) would give away the host kernel's own code and stack "
                             f"(pfns {lo:#x}-{hi - 1:#x}): the host could never run again")

    def _keep_own_memcache(self) -> None:
        """Before ``__pkvm_host_map_guest``: hyp takes pages from the loaded vCPU's memcache list by donation
        (``refill_memcache``, up to ``kvm_mmu_cache_min_pages``); none of those may be the host's own image.

        Reads the list as the host kernel would (its own ``struct kvm_vcpu``, then each page's link word);
        a list that does not read as whole host pages is left for hyp to refuse.
        """
        loaded = self.loaded_vcpu
        vm = self.vms.get(loaded[0]) if loaded is not None else None
        if vm is None or not 0 <= loaded[1] < len(vm.vcpus):
            return
        from pkvmlab.host.vcpu_run import MEMCACHE_TOPUP, vcpu_offsets

        off, vcpu = vcpu_offsets(self.fw), vm.vcpus[loaded[1]]
        lo, hi = self.image_base >> 12, (self.image_base >> 12) + K.IMAGE_PAGES
        try:
            head = self.read_u64(vcpu + off["arch.pkvm_memcache.head"])
            nr = self.read_u64(vcpu + off["arch.pkvm_memcache.nr_pages"])
            for _ in range(min(nr, MEMCACHE_TOPUP)):
                if head % 4096:
                    return
                if lo <= head >> 12 < hi:
                    raise UsageError(f"the memcache list of vCPU {loaded[1]} of VM {loaded[0]:#x} names pfn {head >> 12:#x}, "
                                     f"the host kernel's own code and stack (pfns {lo:#x}-{hi - 1:#x}): hyp would take "
                                     "it (refill_memcache) and the host could never run again; push pages from "
                                     "lab.host.alloc_pages() instead")
                head = self.read_u64(head)
        except HostAccessFault:
            return

    def init_shadow(self, host_kvm: int, shadow_va: int, shadow_size: int, pgd: int) -> int:
        """``__pkvm_init_shadow`` with raw arguments; returns the new VM's handle."""
        if isinstance(shadow_va, int) and isinstance(shadow_size, int) and shadow_size > 0:
            self._keep_own_image(shadow_va >> 12, ((shadow_va + shadow_size - 1) >> 12) - (shadow_va >> 12) + 1,
                                 "__pkvm_init_shadow")
        if isinstance(pgd, int):
            self._keep_own_image(pgd >> 12, 1, "__pkvm_init_shadow")
        return self.call("__pkvm_init_shadow", host_kvm, shadow_va, shadow_size, pgd)

    def teardown_shadow(self, handle: int) -> None:
        """``__pkvm_teardown_shadow`` with a raw handle."""
        self.call("__pkvm_teardown_shadow", handle)

    # -- protected VMs, as the host kernel makes them (pkvmlab/host/vm.py) -------------------
    @serialised
    def create_vm(self, nr_vcpus: int = 2, guest: str | None = None, *, protected: bool = True):
        """Allocate and share ``struct kvm`` and vCPUs, donate a shadow area and PGD, ``__pkvm_init_shadow``.

        ``guest="hello"`` (a program in ``firmware/guests/``) gives the VM something to run: ``vm.run()``.
        On the mainline era (``Lab(era="mainline")``): ``__pkvm_reserve_vm``, ``__pkvm_init_vm``, then
        ``__pkvm_init_vcpu`` per vCPU (pkvmlab/host/vm_mainline.py); ``protected=False`` makes a non-protected
        VM, whose pages the host shares with it and keeps.
        """
        if self.era == "mainline":
            from pkvmlab.host.vm_mainline import create_vm as create_mainline_vm

            return create_mainline_vm(self, nr_vcpus, guest, protected=protected)
        if protected is not True:
            raise UsageError("the seed's era has protected VMs only (__pkvm_init_shadow); "
                             "non-protected VMs under pKVM are mainline's: Lab(era=\"mainline\")")
        from pkvmlab.host.vm import create_vm

        return create_vm(self, nr_vcpus, guest)

    @serialised
    def teardown_vm(self, handle: int) -> None:
        """``__pkvm_teardown_shadow``, then unshare and free what the host had given."""
        check_uint(handle, 64, "handle")
        if self.era == "mainline":
            from pkvmlab.host.vm_mainline import teardown_vm as teardown_mainline_vm

            return teardown_mainline_vm(self, handle)
        from pkvmlab.host.vm import teardown_vm

        teardown_vm(self, handle)

    @serialised
    def setup(self) -> None:
        """What the host kernel does first at EL1: a known SCTLR_EL1, VBAR_EL1 at its vectors, its stack, FP/SIMD on.

        SCTLR_EL1 = INIT_SCTLR_EL1_MMU_OFF, as Linux's ``init_kernel_el`` (arch/arm64/kernel/head.S, mainline) writes
        it before anything else: the host's stage 1 stays off, and the value is the one hyp gives a new vCPU
        (firmware/vcpu.c), so a world switch to a guest that keeps it finds nothing to change in SCTLR_EL1 (a change
        makes QEMU flush its whole TLB, EL2's entries too: docs/design_notes.md).  CPACR_EL1.FPEN = 0b11 as Linux's
        ``__cpu_setup`` (arch/arm64/mm/proc.S, mainline) sets it: without it QEMU traps the host's first FP/SIMD
        instruction (EC 0x07); Unicorn never enforces FPEN (tests/test_qemu_backend.py pins that).
        """
        self.core.set_sysreg("SCTLR_EL1", INIT_SCTLR_EL1_MMU_OFF)
        self.core.set_sysreg("VBAR_EL1", self.image_base + K.VECTORS)
        self.core.set_sysreg("CPACR_EL1", CPACR_EL1_FPEN)
        # At EL1h the live SP is SP_EL1; QEMU keeps it in SP itself, not in the banked copy.
        self.core.set_reg("sp", self.image_base + K.IMAGE_PAGES * 4096)

    @serialised
    def execute(self, code: str | bytes, **regs: int) -> dict[str, int]:
        """Run ``code`` (A64 assembly text, or machine code) as the host kernel at EL1; returns x0..x30 after it.

        ``regs`` set registers first (``x0=…``).  The code goes, with the host's own stores, into a page of
        the host's kept for it, and runs until its last instruction is done.  An exception that reaches the
        host's vector comes back as HostException (HostAccessFault when the hypervisor refused an access).
        """
        if isinstance(code, str):
            from pkvmlab.firmware.asm import assemble

            code = assemble(code)
        if not isinstance(code, (bytes, bytearray)) or len(code) % 4 or not 0 < len(code) <= 4096 - 4:
            raise UsageError("execute() takes A64 assembly text, or machine code: whole 4-byte instructions, "
                             "at most a page")
        if self._code_page is None:
            self._code_page = self.alloc_pages() << 12
        kept = [self.core.x[i] for i in range(9)]   # the stores below use x0..x8: the code gets the host's own
        self.write(self._code_page, bytes(code) + b"\0" * 4)   # the end marker: where the run stops
        for i, v in enumerate(kept):
            self.core.x[i] = v
        for name, value in regs.items():
            self.core.set_reg(name, value)
        res = self.core.run(self._code_page, self._code_page + len(code))
        if isinstance(res, HostVector):
            self._host_exception(res, "code", None)
        return Registers({f"x{i}": self.core.reg(f"x{i}") for i in range(31)}, title="x0..x30 after the code ran")

    # -- running stubs ---------------------------------------------------------------------
    def _run_stub(self, offset: int, what: str, address: int | None = None, *, resumed: bool = False,
                  resumed_timed_out: tuple[bool, bool] = (False, False)):
        self.changes += 1
        start = self.image_base + offset
        res = self.core.run(start, self.image_base + K.stub_end(offset), resumed=resumed,
                            resumed_timed_out=resumed_timed_out)
        if isinstance(res, HostVector):
            self._host_exception(res, what, address)

    def _host_exception(self, res: HostVector, what: str, address: int | None):
        c = self.core
        esr, far, elr = c.sysreg("ESR_EL1"), c.sysreg("FAR_EL1"), c.sysreg("ELR_EL1")
        vec = res.pc - c.sysreg("VBAR_EL1")
        vector = K.VECTOR_NAMES.get(vec, hex(vec))
        d = E.decode(esr)
        if d.is_abort and esr & E.ISS_S1PTW:   # pKVM's marker (host_inject_abort): the hypervisor refused it
            raise HostAccessFault(
                f"host {what} faulted: the hypervisor injected \"{d.words()}\" "
                f"(ESR_EL1={esr:#x}, FAR_EL1={far:#x}): stage 2 does not let the host touch "
                f"the page at {far & ~0xFFF:#x}",
                esr=esr, far=far, elr=elr, access=what, address=address if address is not None else far,
                vector=vector)
        raise HostException(f"host {what}: the host kernel took an exception at its own vector ({vector}): "
                            f"{d.words()} (ESR_EL1={esr:#x}, ELR_EL1={elr:#x})",
                            esr=esr, far=far, elr=elr, access=what, address=address if address is not None else elr,
                            vector=vector)

    # -- hypercalls ------------------------------------------------------------------------
    def hvc(self, func_id: int, *args: int) -> tuple[int, int, int, int]:
        """Issue ``HVC #0`` with x0 = ``func_id`` and x1.. = ``args``; returns x0..x3 as the host sees them.

        Every value must fit a 64-bit register (a negative one is taken as its two's complement): nothing is
        truncated silently.
        """
        regs = [func_id, *args]
        for i, v in enumerate(regs):
            if type(v) is not int or not 0 <= v < 1 << 64:
                regs[i] = check_uint(v, 64, f"hvc() argument x{i}", signed_ok=True)
        if len(args) > 6:
            raise UsageError("a host hypercall takes at most 6 arguments (x1..x6)")
        c = self.core
        self.changes += 1
        with c.lock:
            if c.native is not None and c.panic is None:  # fast path: one native call (x0..x6 in, x0..x3 out)
                token = c.arm_watchdog(c.run_limit_ms)
                out = c.native.hvc(self._hvc_begin, self._hvc_end, regs + _ZEROS[len(args):])
                timed_out = c.disarm_watchdog(token)
                if out is not None:
                    return out
                self._run_stub(K.HVC, f"hypercall {func_id:#x}", resumed=True, resumed_timed_out=timed_out)
                return c.x[0], c.x[1], c.x[2], c.x[3]
            for i in range(7):
                c.x[i] = regs[i] if i < len(regs) else 0
            self._run_stub(K.HVC, f"hypercall {func_id:#x}")
            return c.x[0], c.x[1], c.x[2], c.x[3]

    @serialised
    def call(self, name: str, *args: int) -> int:
        """A named host hypercall: returns x1, or raises HypercallError naming the call and errno."""
        if name not in self.hypercalls:
            if self.era == "mainline":
                from pkvmlab.arch.hypercalls_mainline import MAINLINE_ENUM, NOT_MODELLED

                if name in NOT_MODELLED:
                    raise UsageError(f"{name} (id {MAINLINE_ENUM.index(name)} in mainline's table) is not modelled: "
                                     f"{NOT_MODELLED[name]}; the firmware answers it SMCCC_RET_NOT_SUPPORTED")
            raise UsageError(f"unknown hypercall {name!r} in the {self.era} era's firmware; "
                             f"known: {', '.join(self.hypercalls)}")
        want = self.hypercall_args[name]
        if len(args) != len(want):
            raise UsageError(f"{name} takes ({', '.join(want)}), got {len(args)} argument(s)")
        if name in ("__pkvm_host_map_guest", "__pkvm_host_donate_guest", "__pkvm_host_share_guest"):
            self._keep_own_memcache()
        x0, x1, _, _ = self.hvc(self.hypercalls[name], *args)
        return self._call_result(name, args, x0, x1)

    def _call_result(self, name: str, args: tuple, x0: int, x1: int) -> int:
        """What ``call()`` makes of a hypercall's x0 (SMCCC status) and x1 (result): logged, errors raised."""
        if x0 == SMCCC_RET_NOT_SUPPORTED:
            self.log.append((name, args, -95))
            raise HypercallError(name, args, -95, refusal_reason(self, name, args, -95))  # no such handler
        if x0 != SMCCC_RET_SUCCESS:
            raise MachineError(f"{name}: unexpected SMCCC status x0={x0:#x}")
        ret = _signed(x1)
        self.log.append((name, args, ret))
        if name == "__pkvm_vcpu_load" and ret == 0:
            self.loaded_vcpu = (args[0], args[1])
        elif name == "__pkvm_vcpu_put":
            self.loaded_vcpu = None
        if -4095 <= ret < 0:
            raise HypercallError(name, args, ret, refusal_reason(self, name, args, ret))
        return ret

    # -- memory, as the host: real loads and stores at EL1 -----------------------------------
    @serialised
    def read_u64(self, pa: int) -> int:
        self._check_addr(pa, 8)
        return self.call_stub(K.LOAD64, [pa], 2, f"read of 8 bytes at {pa:#x}", pa)[1]

    @serialised
    def write_u64(self, pa: int, value: int) -> None:
        self._check_addr(pa, 8)
        self.call_stub(K.STORE64, [pa, check_uint(value, 64, "write_u64 value")], 0, f"write of 8 bytes at {pa:#x}", pa)

    @serialised
    def read(self, pa: int, n: int) -> bytes:
        """Read ``n`` bytes at ``pa`` with EL1 loads (so stage 2 applies)."""
        self._check_addr(pa, n)
        out = bytearray()
        addr, end = pa, pa + n
        what = f"read of {n} bytes at {pa:#x}"
        while addr < end:   # each load one native call (call_stub), as a hypercall
            if addr % K.BLOCK == 0 and end - addr >= K.BLOCK:
                out += _BLOCK.pack(*self.call_stub(K.LOAD_BLOCK, [addr], 9, what, addr)[1:])
                addr += K.BLOCK
            elif addr % 8 == 0 and end - addr >= 8:
                out += self.call_stub(K.LOAD64, [addr], 2, what, addr)[1].to_bytes(8, "little")
                addr += 8
            else:
                out.append(self.call_stub(K.LOAD8, [addr], 2, what, addr)[1] & 0xFF)
                addr += 1
        return bytes(out)

    def call_stub(self, offset: int, regs: list[int], n_out: int, what: str, address: int | None = None) -> list[int]:
        """Run the host stub at ``offset`` (kernel_image.py) with x0.. = ``regs``; returns x0..x(n_out-1).

        One native call when the native hook is there, as ``hvc()`` (pkvmlab/host/vcpu_run.py's KVM_RUN round trip).
        ``address``: what a fault reports as the access's address (default FAR_EL1).
        """
        c = self.core
        self.changes += 1
        with c.lock:
            if c.native is not None and c.panic is None:
                token = c.arm_watchdog(c.run_limit_ms)
                out = c.native.call_stub(self.image_base + offset, self.image_base + K.stub_end(offset), regs, n_out)
                timed_out = c.disarm_watchdog(token)
                if out is not None:
                    return out
                self._run_stub(offset, what, address, resumed=True, resumed_timed_out=timed_out)
            else:
                for i, v in enumerate(regs):
                    c.x[i] = v
                self._run_stub(offset, what, address)
            return [c.x[i] for i in range(n_out)]

    @serialised
    def write(self, pa: int, data: bytes) -> None:
        """Write ``data`` at ``pa`` with EL1 stores (so stage 2 applies).

        Each aligned 64-byte block is eight STRs (the STORE_BLOCK stub); a run of zero blocks (a zeroed page,
        a struct's padding) is one call of the same stub, looping over them with the same eight STRs, so the
        stores, their order and any fault are those of one call per block.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UsageError(f"write() takes bytes, got {type(data).__name__} {data!r}: "
                             "pass e.g. b'\\x05' or (5).to_bytes(8, 'little'), or use write_u64()")
        data = bytes(data)
        self._check_addr(pa, len(data))
        addr, end = pa, pa + len(data)
        what = f"write of {len(data)} bytes at {pa:#x}"
        while addr < end:   # each store one native call (call_stub), as a hypercall
            off = addr - pa
            if addr % K.BLOCK == 0 and end - addr >= K.BLOCK:
                stop = addr + K.BLOCK
                if data.startswith(_ZERO_BLOCK, off):
                    while end - stop >= K.BLOCK and data.startswith(_ZERO_BLOCK, stop - pa):
                        stop += K.BLOCK
                try:
                    self.call_stub(K.STORE_BLOCK, [addr, *_BLOCK.unpack_from(data, off), stop], 0, what, addr)
                except HostException as e:
                    if stop - addr > K.BLOCK:   # x0 is the block whose store faulted: the stub moves on only after one
                        e.address = self.core.x[0]
                    raise
                addr = stop
            elif addr % 8 == 0 and end - addr >= 8:
                self.call_stub(K.STORE64, [addr, int.from_bytes(data[off:off + 8], "little")], 0, what, addr)
                addr += 8
            else:
                self.call_stub(K.STORE8, [addr, data[off]], 0, what, addr)
                addr += 1

    @staticmethod
    def _check_addr(pa: int, n: int) -> None:
        if type(pa) is not int or type(n) is not int or n < 0 or pa < 0 or pa + n > 1 << 48:
            raise UsageError(f"host memory access needs an int address and size within the 48-bit PA space, "
                             f"got {pa!r}, {n!r}")
