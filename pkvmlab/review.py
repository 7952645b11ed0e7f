"""The seed's behaviours as checks you can run on any firmware: edit ``firmware/`` (or a copy), boot it, check.

``check_seed(lab)`` drives the shadow VM table through what the seed patch promises (handles, VMIDs,
round-robin allocation, every errno, a full table, nothing leaked) and says, for each, what was expected
and what happened.  Notebook 6 uses it to show the effect of the review's suggested changes.

Each expectation is the seed's text ([PATCH v2 12/24] "KVM: arm64: Introduce shadow VM state at EL2",
arch/arm64/kvm/hyp/nvhe/pkvm.c), named in the check: ``check_shadow_size`` (-EINVAL for a bad vCPU count,
-ENOMEM for a too-small area), ``insert_shadow_table`` (-EEXIST, -ENOMEM when full, round-robin from
``next_shadow_alloc``), ``find_shadow_by_handle`` (-ENOENT) and ``__pkvm_teardown_shadow`` (-EBUSY while
``hyp_page_count(vm)`` is not 0).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from pkvmlab.errors import HypercallError, PkvmLabError
from pkvmlab.host.vm import write_vcpu_array

HANDLE_OFFSET = 0x1000
KVM_MAX_PVMS = 255


@dataclass(frozen=True)
class Check:
    """One seed behaviour: what the seed says, what the firmware did."""

    name: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass(frozen=True)
class SeedReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def __repr__(self) -> str:
        lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.name}: " + (c.got if c.ok else f"expected {c.expected}, got {c.got}")
                 for c in self.checks]
        n = sum(c.ok for c in self.checks)
        return "\n".join([f"seed behaviour: {n} of {len(self.checks)} checks pass", *lines])

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='color:{'#2a7d2a' if c.ok else '#c0392b'}'><b>{'PASS' if c.ok else 'FAIL'}</b></td>"
            f"<td>{escape(c.name)}</td><td><code>{escape(c.expected)}</code></td><td><code>{escape(c.got)}</code></td></tr>"
            for c in self.checks)
        n = sum(c.ok for c in self.checks)
        return (f"<p><b>seed behaviour: {n} of {len(self.checks)} checks pass</b></p><table><thead><tr><th></th>"
                f"<th>behaviour</th><th>expected</th><th>got</th></tr></thead><tbody>{rows}</tbody></table>")


def _errname(e: Exception) -> str:
    if isinstance(e, HypercallError):
        return f"-{errno.errorcode.get(e.errno, e.errno)}"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"


def _outcome(fn: Callable[[], object]) -> str:
    """``-EEXIST`` for a failed hypercall, ``ok`` if it succeeded, the error's name for anything else."""
    try:
        fn()
    except PkvmLabError as e:
        return _errname(e)
    return "ok"


def check_seed(lab, *, full_table: bool = True) -> SeedReport:
    """Run every seed behaviour on ``lab`` (which should have no VMs yet) and tear everything down again.

    A firmware that breaks a behaviour gets a FAIL line saying what happened instead, never an exception.
    """
    host, hyp = lab.host, lab.hyp
    checks: list[Check] = []
    vms = []
    before_pool, before_own = hyp.pool().free_pages, hyp.ownership()

    def create(n: int):
        vms.append(host.create_vm(n))
        return vms[-1]

    try:
        a, b, _ = create(2), create(1), create(1)
        t = hyp.shadow_table()
        got = [(s.index, s.handle, s.vmid) for s in t.vms]
        want = [(i, HANDLE_OFFSET + i, i + 1) for i in range(3)]
        checks.append(Check("handle = index + 0x1000, VMID = index + 1", _fmt(want), _fmt(got)))
        checks.append(Check("nr_shadow_entries counts the VMs", "3", str(t.nr_shadow_entries)))
        b.teardown()
        vms.remove(b)
        d = create(1)
        checks.append(Check("round-robin: after tearing down the middle VM, the next takes the slot after the last",
                            hex(HANDLE_OFFSET + 3), hex(d.handle)))
    except PkvmLabError as e:
        checks.append(Check("create three VMs, tear down the middle one, create another", "ok", _errname(e)))
        return _finish(lab, checks, vms, before_pool, before_own)

    # Raw hypercalls with pages the host keeps for the purpose (given back at the end, whatever hyp did).
    # The seed passes the host's vCPU pointers in the PGD; set_host_vcpus() pins them before the insert.
    shadow, pgd, kvm = host.alloc_pages(1), host.alloc_pages(2, align=2), host.alloc_pages(1)
    write_vcpu_array(host, pgd << 12, a.vcpus)
    checks.append(Check("insert_shadow_table: a second shadow for the same struct kvm", "-EEXIST",
                        _outcome(lambda: host.init_shadow(a.host_kvm, shadow << 12, a.shadow_size, pgd << 12))))
    _outcome(lambda: write_vcpu_array(host, pgd << 12, a.vcpus))   # a failed init may have zeroed what it took
    host.write(kvm << 12, bytes(lab.fw.layout("struct kvm").size))
    host.share_hyp(kvm)
    checks.append(Check("check_shadow_size: zero vCPUs", "-EINVAL",
                        _outcome(lambda: host.init_shadow(kvm << 12, shadow << 12, a.shadow_size, pgd << 12))))
    checks.append(Check("check_shadow_size: a shadow area too small for the vCPUs", "-ENOMEM",
                        _outcome(lambda: host.init_shadow(a.host_kvm, shadow << 12, 0, pgd << 12))))
    _outcome(lambda: host.unshare_hyp(kvm))
    checks.append(Check("__pkvm_teardown_shadow while the VM is referenced (hyp_page_count)", "-EBUSY",
                        _referenced_teardown(lab, a)))

    for handle in (0, HANDLE_OFFSET - 1, HANDLE_OFFSET + KVM_MAX_PVMS, b.handle):
        checks.append(Check(f"teardown of handle {handle:#x}", "-ENOENT",
                            _outcome(lambda h=handle: host.teardown_shadow(h))))

    if full_table:
        err = "ok"
        try:
            for _ in range(KVM_MAX_PVMS + 1 - len(vms)):   # bounded: a broken table may never fill
                create(1)
        except PkvmLabError as e:
            err = _errname(e)
        t = hyp.shadow_table()
        checks.append(Check(f"{KVM_MAX_PVMS} VMs fit, the next gets -ENOMEM",
                            f"{KVM_MAX_PVMS} then -ENOMEM", f"{t.nr_shadow_entries} then {err}"))
        checks.append(Check("the largest VMID in a full table", str(KVM_MAX_PVMS),
                            str(max((s.vmid for s in t.vms), default=0))))
    return _finish(lab, checks, vms, before_pool, before_own)


def _referenced_teardown(lab, vm) -> str:
    """Tear ``vm`` down while its shadow area's first page holds a reference, as a loaded vCPU would.

    The lab has no vCPU load yet, so the debugger takes the reference in hyp_vmemmap and drops it after.
    """
    lay = lab.fw.layout("hyp_page")
    field = lay.field("refcount")
    entry = lab.hyp.read_global("hyp_vmemmap") + (vm.shadow_va - lab.core.ram_base) // 4096 * lay.size + field.offset
    old = lab.core.phys.read(entry, field.size)
    lab.core.phys.write(entry, (1).to_bytes(field.size, "little"))
    try:
        return _outcome(lambda: lab.host.teardown_shadow(vm.handle))
    finally:
        lab.core.phys.write(entry, old)


def _finish(lab, checks: list[Check], vms: list, before_pool: int, before_own) -> SeedReport:
    """Tear every VM down and check that hyp gave back every page and every pool page."""
    from pkvmlab.inspect.diff import diff

    hyp = lab.hyp
    errors = []
    for vm in vms:
        try:
            vm.teardown()
        except PkvmLabError as e:   # a broken firmware may refuse: say so in the report, keep going
            errors.append(e)
    after_own = hyp.ownership()
    changed = diff(before_own, after_own, mappings=False)
    got = "no page changed owner or state" if not changed else f"{changed.nr_pages} page(s) changed"
    checks.append(Check("teardown gives every page back", "no page changed owner or state",
                        got + (f"; teardown failed: {_errname(errors[0])}" if errors else "")))
    # Every pool page in use is a page table; blocks split on the way may stay split (as upstream).
    tables = sum(v.nr_tables for v in after_own.sides.values()) - sum(v.nr_tables for v in before_own.sides.values())
    leaked = (before_pool - hyp.pool().free_pages) - tables
    checks.append(Check("the hyp pool has every page back but the tables that now split host blocks",
                        "0 pages leaked", f"{leaked} pages leaked"))
    return SeedReport(tuple(checks))


def _fmt(rows) -> str:
    return ", ".join(f"[{i}] {h:#x}/VMID {v}" for i, h, v in rows)


def edit(path, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` in the file at ``path`` with ``new``; return the change as a diff."""
    import difflib
    from pathlib import Path

    p = Path(path)
    text = p.read_text()
    n = text.count(old)
    if n != 1:
        raise PkvmLabError(f"{p.name}: the text to replace occurs {n} times (it must occur exactly once)")
    p.write_text(text.replace(old, new))
    return "".join(difflib.unified_diff(text.splitlines(True), text.replace(old, new).splitlines(True),
                                        f"a/{p.name}", f"b/{p.name}", n=2))
