"""From the concrete machine to the register state :mod:`pkvmlab.spec.registers` speaks about.

* the host's CPU registers it owns (x7..x30: x0..x6 carry a hypercall's arguments; SP_EL0, v0..v31, FPCR,
  FPSR, the EL0/EL1 system registers), read from the core;
* the loaded vCPU (``loaded_shadow_state``; on the mainline era ``loaded_hyp_vcpu``, a ``struct pkvm_hyp_vcpu``):
  hyp's copy of the guest's registers and fault info, and the host's ``struct kvm_vcpu`` it pins (its registers,
  fault fields, flags, and every other byte of it); on mainline whether its VM is protected, which picks the rule.

Offsets come from the firmware's DWARF (:mod:`pkvmlab.inspect.vcpu_regs`); a context that grows needs no
change here.  :class:`RegisterCheck` is what ``lab.spec_check`` runs around every hypercall.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from pkvmlab.inspect.vcpu_regs import context_fields, ctxt_offset
from pkvmlab.spec import registers as R

# (name, (crn, crm, op0, op1, op2)): the EL0/EL1 system registers the host's own code may use.
HOST_SYSREGS = (
    ("tpidr_el0", (13, 0, 3, 3, 2)), ("tpidrro_el0", (13, 0, 3, 3, 3)), ("tpidr_el1", (13, 0, 3, 0, 4)),
    ("sp_el0", (4, 1, 3, 0, 0)), ("elr_el1", (4, 0, 3, 0, 1)), ("spsr_el1", (4, 0, 3, 0, 0)),
    ("esr_el1", (5, 2, 3, 0, 0)), ("far_el1", (6, 0, 3, 0, 0)), ("contextidr_el1", (13, 0, 3, 0, 1)),
    ("ttbr0_el1", (2, 0, 3, 0, 0)), ("ttbr1_el1", (2, 0, 3, 0, 1)), ("mair_el1", (10, 2, 3, 0, 0)),
    ("amair_el1", (10, 3, 3, 0, 0)), ("tcr_el1", (2, 0, 3, 0, 2)), ("par_el1", (7, 4, 3, 0, 0)),
    ("cntkctl_el1", (14, 1, 3, 0, 0)), ("cpacr_el1", (1, 0, 3, 0, 2)), ("mdscr_el1", (0, 2, 2, 0, 2)),
    ("vbar_el1", (12, 0, 3, 0, 0)), ("sctlr_el1", (1, 0, 3, 0, 0)),
)


def _host_cpu_regs() -> list[tuple[str, int | tuple]]:
    """(name, unicorn register id, or (crn, crm, op0, op1, op2) of a system register unicorn does not name)."""
    import unicorn.arm64_const as A

    regs = ([(f"x{i}", A.UC_ARM64_REG_X7 + i - 7) for i in range(7, 29)] + [("x29", A.UC_ARM64_REG_X29),
            ("x30", A.UC_ARM64_REG_X30)] + [(f"v{i}", A.UC_ARM64_REG_Q0 + i) for i in range(32)]
            + [("fpcr", A.UC_ARM64_REG_FPCR), ("fpsr", A.UC_ARM64_REG_FPSR)])
    for name, key in HOST_SYSREGS:
        regs.append((name, getattr(A, f"UC_ARM64_REG_{name.upper()}", key)))
    return regs


def _host_batch(core):
    batch = core.__dict__.get("_spec_host_regs")
    if batch is None:
        from pkvmlab.machine.regs_batch import RegBatch

        batch = core._spec_host_regs = RegBatch(core.unicorn_engine("the spec's register check"), _host_cpu_regs())
    return batch


def host_cpu(core) -> dict[str, int]:
    """The host's own registers now (what a run must leave as they are): one batch read of libunicorn's."""
    batch = _host_batch(core)
    with core.lock:
        return batch.read()


def host_cpu_raw(core) -> bytes:
    """The same registers as bytes (``RegBatch.raw``): equal bytes, equal registers; ``host_cpu_decode`` names them."""
    batch = _host_batch(core)
    with core.lock:
        return batch.raw()


def host_cpu_decode(core, raw: bytes) -> dict[str, int]:
    return _host_batch(core).decode(raw)


@lru_cache(maxsize=16)
def _context_struct(fw) -> tuple[struct.Struct, tuple[str, ...], tuple[str, ...]]:
    """The whole context as one ``struct`` format (its fields in offset order, gaps skipped): (the format, a name per
    value it unpacks -- a 16-byte field as two 8-byte halves, the second named ``name + "'"`` --, the 16-byte names)."""
    fmt, at, names, wide = ["<"], 0, [], []
    for name, off, size in sorted(context_fields(fw), key=lambda f: f[1]):
        if off < at or size not in (1, 2, 4, 8, 16):
            raise ValueError(f"kvm_cpu_context field {name} (offset {off}, {size} bytes) does not unpack")
        fmt.append(f"{off - at}x" if off > at else "")
        fmt.append({1: "B", 2: "H", 4: "I", 8: "Q", 16: "QQ"}[size])
        names += [name, name + "'"] if size == 16 else [name]
        if size == 16:
            wide.append(name)
        at = off + size
    return struct.Struct("".join(fmt)), tuple(names), tuple(wide)


@lru_cache(maxsize=16)
def _offsets(fw) -> tuple:
    """The seed's loaded ``struct kvm_shadow_vcpu_state`` (``loaded_shadow_state``), or mainline's loaded
    ``struct pkvm_hyp_vcpu`` (``loaded_hyp_vcpu``: hyp's ``vcpu`` and the ``host_vcpu`` it pins; upstream
    nvhe/pkvm.h, mainline).  On mainline also where the vCPU's VM says whether it is protected."""
    vcpu = fw.layout("kvm_vcpu")
    fault = {k: vcpu.offset(f"arch.fault.{k}") for k in ("esr_el2", "far_el2", "hpfar_el2")}
    memcache = vcpu.field("arch.pkvm_memcache")   # map_guest's refill takes pages off the host's list: host_calls' rules
    if fw.era == "mainline":
        state = fw.layout("pkvm_hyp_vcpu")
        where = (state.offset("vcpu"), state.offset("host_vcpu"), fw.symbol("loaded_hyp_vcpu"))
        protected = (vcpu.offset("kvm"), fw.layout("kvm").offset("arch.pkvm.is_protected"))
    else:
        state = fw.layout("kvm_shadow_vcpu_state")
        where = (state.offset("shadow_vcpu"), state.offset("host_vcpu"), fw.symbol("loaded_shadow_state"))
        protected = None   # the seed's era has protected VMs only
    return (ctxt_offset(fw), fault, vcpu.offset("arch.flags"), vcpu.size, *where, (memcache.offset, memcache.size),
            protected)


class LoadedVcpu:
    """The loaded vCPU's two copies, read in two reads: hyp's shadow vCPU and the host's struct kvm_vcpu."""

    def __init__(self, lab):
        self.lab, self.fw, self.phys = lab, lab.fw, lab.core.phys
        # RAM through the engine's own read, without the debugger's per-call lock and checks (the check runs under the
        # core's lock); an address outside RAM goes to the debugger's read, and its one-line error.
        uc = getattr(self.phys, "_uc", None)
        self._read = self.phys.read
        if uc is not None:
            lo, hi, phys_read = self.phys.base, self.phys.base + self.phys.size, self.phys.read
            self._read = lambda pa, n: bytes(uc.mem_read(pa, n)) if lo <= pa and pa + n <= hi else phys_read(pa, n)
        (self.ctxt, self.fault, self.flags, self.size, self.shadow, self.host_ptr, self.loaded_at,
         self.memcache, self._protected) = _offsets(lab.fw)
        self.ctxt_size = lab.fw.layout("kvm_cpu_context").size
        self._struct = _context_struct(lab.fw)
        self._view = (None, None)   # (bytes, host_view of them): the host's copy is often as the last call left it
        mc, n = self.memcache
        self._named = sorted([(self.ctxt, self.ctxt + self.ctxt_size), (self.flags, self.flags + 8), (mc, mc + n),
                              *((o, o + 8) for o in self.fault.values())])

    def protected(self, state: int) -> bool:
        """Whether the loaded vCPU's VM is protected (always on the seed's era): hyp's ``vcpu.kvm->arch.pkvm``."""
        if self._protected is None:
            return True
        kvm_ptr, flag = self._protected
        kvm = int.from_bytes(self.phys.read(state + self.shadow + kvm_ptr, 8), "little")
        return bool(self.phys.read(kvm + flag, 1)[0])

    def state(self) -> int:
        return int.from_bytes(self._read(self.loaded_at, 8), "little")

    def _regs(self, raw: bytes) -> dict[str, int]:
        """The context's registers (:func:`context_fields`), unpacked at once."""
        fmt, names, wide = self._struct
        out = dict(zip(names, fmt.unpack_from(raw, self.ctxt)))
        for name in wide:
            out[name] |= out.pop(name + "'") << 64
        return out

    def guest_raw(self, state: int) -> bytes:
        return self._read(state + self.shadow, self.size)

    def guest(self, raw: bytes) -> tuple[dict, dict]:
        """hyp's copy of the guest (the shadow vCPU's bytes): (registers, fault info)."""
        return self._regs(raw), {k: int.from_bytes(raw[o:o + 8], "little") for k, o in self.fault.items()}

    def host_vcpu(self, state: int) -> tuple[int, bytes]:
        """(PA, bytes) of the host's struct kvm_vcpu the loaded state pins."""
        pa = int.from_bytes(self._read(state + self.host_ptr, 8), "little")
        return pa, self._read(pa, self.size)

    def host_view(self, raw: bytes) -> dict[str, int]:
        """What the rules name in the host's struct kvm_vcpu: its registers, fault fields and flags (a new dict)."""
        if raw == self._view[0]:
            return dict(self._view[1])
        out = self._regs(raw)
        out.update({k: int.from_bytes(raw[o:o + 8], "little") for k, o in self.fault.items()})
        out["flags"] = int.from_bytes(raw[self.flags:self.flags + 8], "little")
        self._view = (raw, dict(out))
        return out

    def others(self, raw: bytes) -> bytes:
        """The bytes of struct kvm_vcpu no rule names (no call may change them); the memcache is host_calls'."""
        out, at = [], 0
        for lo, hi in self._named:
            out.append(raw[at:lo])
            at = max(at, hi)
        return b"".join(out) + raw[at:]


class RegisterCheck:
    """The register rules around one hypercall: ``before()`` then ``after(ret)`` -> what differs, in words.

    A call that runs no guest is compared as bytes (cheap); only a difference, or a run, is decoded."""

    def __init__(self, lab, name: str, loaded: LoadedVcpu | None = None):
        self.lab, self.name = lab, name
        self.v = loaded or LoadedVcpu(lab)

    def before(self) -> None:
        v = self.v
        self.run = self.name == "__kvm_vcpu_run"
        self.cpu = host_cpu_raw(self.lab.core) if self.run else None
        self.state = v.state()
        if self.state:
            self.guest0 = v.guest_raw(self.state)
            self.host_pa, self.host0 = v.host_vcpu(self.state)

    def after(self, ret: int) -> list[str]:
        out = []
        if self.cpu is not None:
            # Compared as bytes first: the rule (as before, but for what it lets a call change) allows "unchanged"
            # -- equal bytes, equal registers --; only a difference is decoded and asked of it.
            cpu1 = host_cpu_raw(self.lab.core)
            if cpu1 != self.cpu:
                core = self.lab.core
                out += [f"host {d}" for d in R.differences(R.host_cpu_after_call(host_cpu_decode(core, self.cpu)),
                                                           host_cpu_decode(core, cpu1))]
        if not self.state:
            return out
        v = self.v
        guest1 = v.guest_raw(self.state)
        host1 = v._read(self.host_pa, v.size)
        c = v.ctxt
        if not self.run:
            if guest1[c:c + v.ctxt_size] != self.guest0[c:c + v.ctxt_size]:
                out += [f"guest {d}" for d in R.differences(R.guest_unchanged(v.guest(self.guest0)[0]),
                                                            v.guest(guest1)[0])]
            if host1 == self.host0:
                return out
            allowed = [v.host_view(self.host0)]   # a call that runs no guest writes no register of the host's copy
        elif ret < 0:
            allowed = [v.host_view(self.host0)]
        else:
            guest, fault = v.guest(guest1)
            rule = R.host_vcpu_after_run if v.protected(self.state) else R.host_vcpu_after_np_run
            allowed = rule(v.host_view(self.host0), guest, fault, ret)
        now = v.host_view(host1)
        if not any(a == now for a in allowed):
            out += [f"host's struct kvm_vcpu {d}" for d in R.differences(allowed[-1], now)]
        if v.others(host1) != v.others(self.host0):
            out.append("host's struct kvm_vcpu: bytes no exit writes changed")
        return out
