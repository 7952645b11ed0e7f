"""Why hyp refused a hypercall, worked out by the host from what it knows: its own record of hypercalls.

The hypervisor returns only an errno, as pKVM does.  A host kernel that kept track of what it shared,
donated and created can still say which check refused, in a learner's terms:
"-EPERM: gfn 0x10 already holds a page in VM 0x1000's stage-2".  This module replays ``host.log``
(the calls hyp accepted) into the host's view of its pages and VMs, then matches the refused call's
checks (``firmware/mem_protect.c``, ``mem_guest.c``, ``pkvm.c``) against that view.  It never reads
hyp's memory (that is the debugger's job, ``lab.hyp``): when the host's records cannot tell which check
refused, the reason says so.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
KVM_MAX_PVMS = 255
HANDLE_OFFSET = 0x1000
GUEST_IA_BITS = 40          # the IPA size the firmware gives every guest stage-2 (VTCR_EL2.T0SZ = 24)
UNKNOWN = "the host's own records do not say which check refused (lab.hyp shows hyp's state)"
POOL = ("hyp's page pool has too few free pages for the page-table pages this change needs "
        "(the host cannot see the pool; lab.hyp.pool() can)")


@dataclass
class HostView:
    """What the host knows from the hypercalls hyp accepted: its shared pages, what it gave away, its VMs."""

    shared: set[int] = field(default_factory=set)               # pfns SHARED_OWNED with hyp
    given: dict[int, str] = field(default_factory=dict)         # pfn -> whose it is now, in words
    pinned: dict[int, str] = field(default_factory=dict)        # pfn -> what hyp keeps pinned there
    kvms: dict[int, int] = field(default_factory=dict)          # struct kvm address -> handle
    gfns: dict[int, dict[int, int]] = field(default_factory=dict)  # handle -> {gfn: pfn}
    dead: set[int] = field(default_factory=set)                 # handles torn down
    loaded: tuple[int, int] | None = None                       # (handle, vcpu_idx) loaded on this CPU


def host_view(host) -> HostView:
    """Replay ``host.log`` (only the calls that succeeded) into what the host knows now."""
    from pkvmlab.host.kvm_structs import host_layouts

    pgd_pages = host_layouts(host).pgd_pages
    v = HostView()
    areas: dict[int, list[int]] = {}     # handle -> pfns hyp holds for it (shadow area, PGD)
    for name, args, ret in host.log:
        if ret < 0:
            continue
        if name == "__pkvm_host_share_hyp":
            v.shared.add(args[0])
        elif name == "__pkvm_host_unshare_hyp":
            v.shared.discard(args[0])
        elif name == "__pkvm_init_shadow":
            kvm, va, size, pgd = args
            h = ret
            v.kvms[kvm], v.gfns[h] = h, {}
            v.dead.discard(h)
            mine = []
            for p in range(va >> PAGE_SHIFT, (va + size + PAGE - 1) >> PAGE_SHIFT):
                v.given[p] = f"hyp's: part of VM {h:#x}'s shadow area"
                mine.append(p)
            for p in range(pgd >> PAGE_SHIFT, (pgd >> PAGE_SHIFT) + pgd_pages):
                v.given[p] = f"hyp's: VM {h:#x}'s stage-2 PGD"
                mine.append(p)
            areas[h] = mine
            v.pinned[kvm >> PAGE_SHIFT] = f"the struct kvm of VM {h:#x}"
            vm = host.vms.get(h)
            for k, vcpu in enumerate(getattr(vm, "vcpus", ())):
                v.pinned[vcpu >> PAGE_SHIFT] = f"struct kvm_vcpu {k} of VM {h:#x}"
        elif name == "__pkvm_teardown_shadow":
            h = args[0]
            for p in areas.pop(h, []):
                v.given.pop(p, None)
            for gfn, p in v.gfns.pop(h, {}).items():   # marked for reclaim: still not the host's
                v.given[p] = (f"still VM {h:#x}'s guest page (gfn {gfn:#x}) until the host reclaims it with "
                              f"__pkvm_host_reclaim_page")
            for kvm in [k for k, hh in v.kvms.items() if hh == h]:
                del v.kvms[kvm]
            for p in [p for p, what in v.pinned.items() if what.endswith(f"of VM {h:#x}")]:
                del v.pinned[p]
            v.dead.add(h)
        elif name == "__pkvm_vcpu_load":
            v.loaded = (args[0], args[1])
        elif name == "__pkvm_vcpu_put":
            v.loaded = None
        elif name == "__pkvm_host_map_guest" and v.loaded is not None:
            (pfn, gfn), h = args, v.loaded[0]
            v.given[pfn] = f"the guest's: gfn {gfn:#x} of VM {h:#x}"
            v.gfns.setdefault(h, {})[gfn] = pfn
        elif name == "__pkvm_host_reclaim_page":
            v.given.pop(args[0], None)
    return v


def refusal_reason(host, call: str, args: tuple, err: int) -> str:
    """Which check refused ``call(*args)`` with ``err``, in words; says so when the host cannot tell."""
    try:
        view = host_view(host)
        # the reasons below are the seed's checks; the mainline era's are not written yet: its errno stands alone
        explain = _EXPLAIN.get(call) if getattr(host, "era", "seed") == "seed" else None
        reason = explain(host, view, args, abs(err)) if explain else None
    except Exception:  # noqa: BLE001 - a reason is a courtesy: never let it hide the errno itself
        reason = None
    if abs(err) == E.EOPNOTSUPP:
        return f"the firmware has no handler for {call}"
    return reason or UNKNOWN


# -- what the host knows about one page ---------------------------------------------------------

def _ram(host) -> tuple[int, int]:
    base = host.core.ram_base >> PAGE_SHIFT
    return base, base + (host.core.ram_size >> PAGE_SHIFT)


def _not_ram(host, pfn: int, nr: int = 1) -> str | None:
    lo, hi = _ram(host)
    if lo <= pfn and pfn + nr <= hi:
        return None
    what = f"pfn {pfn:#x}" if nr == 1 else f"pfns {pfn:#x}-{pfn + nr - 1:#x}"
    return f"{what} {'is' if nr == 1 else 'are'} not all RAM (RAM is pfns {lo:#x}-{hi - 1:#x})"


def _not_owned(host, view: HostView, pfn: int) -> str | None:
    """Why the host does not own ``pfn`` outright (PKVM_PAGE_OWNED), or None when, as far as it knows, it does."""
    lo, _ = _ram(host)
    if lo <= pfn < host.image_base >> PAGE_SHIFT:
        return f"pfn {pfn:#x} is in the hypervisor's carve-out: hyp's since boot, never the host's"
    if pfn in view.given:
        return f"pfn {pfn:#x} is no longer the host's: it is {view.given[pfn]}"
    if pfn in view.shared:
        return (f"pfn {pfn:#x} is already shared with hyp (host PKVM_PAGE_SHARED_OWNED, "
                "hyp PKVM_PAGE_SHARED_BORROWED)")
    for h, vm in getattr(host, "vms", {}).items():
        if pfn in getattr(vm, "memcache_pages", ()):
            return (f"pfn {pfn:#x} was pushed on a vCPU memcache of VM {h:#x}: hyp takes such pages by donation "
                    f"(refill_memcache) for the guest's stage-2 tables")
    return None


# -- one function per hypercall: (host, view, args, errno) -> reason or None ---------------------

def _share_hyp(host, view, args, err):
    (pfn,) = args
    if err == E.EINVAL:
        return _not_ram(host, pfn)
    if err == E.EPERM:
        return _not_owned(host, view, pfn)
    return POOL if err == E.ENOMEM else None


def _unshare_hyp(host, view, args, err):
    (pfn,) = args
    if err == E.EINVAL:
        return _not_ram(host, pfn)
    if err == E.EPERM:
        if pfn in view.shared:
            return None
        return _not_owned(host, view, pfn) or f"pfn {pfn:#x} is not shared with hyp: the host owns it outright"
    if err == E.EBUSY:
        what = view.pinned.get(pfn)
        return (f"hyp has pfn {pfn:#x} pinned: it holds {what}; tear that VM down first" if what
                else f"hyp has pfn {pfn:#x} pinned")
    return POOL if err == E.ENOMEM else None


def _init_shadow(host, view, args, err):
    from pkvmlab.host.kvm_structs import host_layouts

    kvm, va, size, pgd = args
    lay = host_layouts(host)
    n = _created_vcpus(host, view, lay, kvm)
    if err == E.EINVAL:     # the seed's check_shadow_size, and the lab's two alignment checks
        if kvm % 8:
            return f"host_kvm {kvm:#x} is not 8-byte aligned"
        if n is not None and not 1 <= n <= lay.max_vcpus:
            return f"created_vcpus = {n} in the struct kvm at {kvm:#x}: it must be 1..{lay.max_vcpus} (KVM_MAX_VCPUS)"
        if pgd % (lay.pgd_pages * PAGE):
            return f"pgd {pgd:#x} is not aligned to the stage-2 PGD's size ({lay.pgd_pages * PAGE:#x} bytes)"
        return (f"created_vcpus in the struct kvm at {kvm:#x} must be 1..{lay.max_vcpus} (KVM_MAX_VCPUS) and the pgd "
                f"aligned to {lay.pgd_pages * PAGE:#x} bytes")
    if err == E.EEXIST:
        h = view.kvms.get(kvm)
        return (f"the struct kvm at {kvm:#x} already has a shadow VM: handle {h:#x}" if h is not None
                else f"the struct kvm at {kvm:#x} already has a shadow VM")
    def not_donatable() -> str | None:
        for start, n, what in ((va, -(-size // PAGE), "shadow area"), (pgd, lay.pgd_pages, "PGD")):
            outside = _not_ram(host, start >> PAGE_SHIFT, n)     # first: a huge size is not walked page by page
            if outside:
                return f"the {what} cannot be donated: {outside}"
            for p in range(start >> PAGE_SHIFT, (start >> PAGE_SHIFT) + n):
                why = _not_owned(host, view, p)
                if why:
                    return f"the {what} cannot be donated: {why}"
        return None

    if err == E.EPERM:
        if (kvm >> PAGE_SHIFT) not in view.shared:
            return (f"the struct kvm at {kvm:#x} is not shared with hyp, so hyp cannot pin it: "
                    f"share pfn {kvm >> PAGE_SHIFT:#x} first")
        return not_donatable()
    if err == E.EBUSY:
        return _vcpu_not_shared(host, view, lay, pgd, n) or (
            "a struct kvm_vcpu that the vCPU pointers (the array at the start of the PGD) name is not shared with "
            "hyp, so hyp cannot pin it (every page of every struct kvm_vcpu must be shared first)")
    if err == E.ENOMEM:
        need = None if n is None else lay.shadow_vm_size + n * lay.shadow_vcpu_state_size
        if need is not None and size < need:     # the seed's check_shadow_size
            return (f"shadow_size {size:#x} is too small for created_vcpus = {n}: it needs sizeof(struct kvm_shadow_vm) + "
                    f"{n} * sizeof(struct kvm_shadow_vcpu_state) = {need:#x} bytes (a larger area is fine)")
        if va % PAGE or size % PAGE:
            return (f"the shadow area {va:#x} + {size:#x} is not whole pages: hyp takes it by donation "
                    "(map_donated_memory)")
        why = not_donatable()   # the seed's map_donated_memory() failing comes back as -ENOMEM
        if why:
            return why
        live = len(view.gfns)
        if live >= KVM_MAX_PVMS:
            return f"all {KVM_MAX_PVMS} slots of the shadow table are in use: tear a VM down first"
        return f"{POOL}; the shadow table still has {KVM_MAX_PVMS - live} free slot(s)"
    return None


def _vcpu_not_shared(host, view: HostView, lay, pgd: int, n: int | None) -> str | None:
    """The first vCPU pointer (read back from the PGD the host wrote them in) whose struct spans a page not shared.

    As the seed's ``set_host_vcpus()`` (``hyp_pin_shared_mem(host_vcpu, host_vcpu + 1)`` per pointer, upstream
    [PATCH v2 12/24], arch/arm64/kvm/hyp/nvhe/pkvm.c), hyp refuses only a struct it cannot pin: the same pointer
    twice is pinned twice, and a pointer need not be aligned (every page the struct covers must be shared).
    """
    if n is None or not 1 <= n <= lay.max_vcpus:
        return None
    try:
        raw = host.read(pgd, 8 * n)
    except Exception:  # noqa: BLE001 - the PGD is not the host's to read: say it in general
        return None
    for i in range(n):
        v = int.from_bytes(raw[8 * i:8 * i + 8], "little")
        first, last = v >> PAGE_SHIFT, (v + lay.vcpu_size - 1) >> PAGE_SHIFT
        for p in range(first, last + 1):
            if p not in view.shared:
                span = f"pfn {first:#x}" if first == last else f"pfns {first:#x}-{last:#x}"
                return (f"vCPU pointer {i} ({v:#x}) names a struct kvm_vcpu on {span}, and pfn {p:#x} is not shared "
                        f"with hyp, so hyp cannot pin it (hyp_pin_shared_mem): share every page it covers first")
    return None


def _created_vcpus(host, view: HostView, lay, kvm: int) -> int | None:
    """``kvm->created_vcpus`` as the host reads it (an EL1 load of its own page, shared so already mapped), or None."""
    if (kvm >> PAGE_SHIFT) not in view.shared:
        return None
    offset, size = lay.off["kvm.created_vcpus"]
    try:
        return int.from_bytes(host.read(kvm + offset, size), "little")
    except Exception:  # noqa: BLE001 - an unreadable struct: say what the checks are instead
        return None


def _handle_words(view: HostView, h: int) -> str:
    if h in view.dead:
        return f"no VM has handle {h:#x}: it was torn down"
    live = ", ".join(f"{x:#x}" for x in sorted(view.gfns)) or "none"
    if not HANDLE_OFFSET <= h < HANDLE_OFFSET + KVM_MAX_PVMS:
        return (f"no VM has handle {h:#x}: handles are {HANDLE_OFFSET:#x}..{HANDLE_OFFSET + KVM_MAX_PVMS - 1:#x} "
                f"(index + {HANDLE_OFFSET:#x}); live: {live}")
    return f"no VM has handle {h:#x} (live: {live})"


def _loaded_words(view: HostView) -> str:
    h, idx = view.loaded
    return f"vCPU {idx} of VM {h:#x}"


def _host_memcache(host, view: HostView) -> tuple[int, int] | None:
    """(head, nr_pages) of the loaded vCPU's memcache list in the host's own struct kvm_vcpu, or None."""
    from pkvmlab.host.vcpu_run import vcpu_offsets

    vm = host.vms.get(view.loaded[0]) if view.loaded else None
    if vm is None:
        return None
    off, vcpu = vcpu_offsets(host.fw), vm.vcpus[view.loaded[1]]
    return (host.read_u64(vcpu + off["arch.pkvm_memcache.head"]), host.read_u64(vcpu + off["arch.pkvm_memcache.nr_pages"]))


def _map_guest(host, view, args, err):
    """``__pkvm_host_map_guest(pfn, gfn)``: refill the loaded vCPU's memcache, then donate ``pfn`` to its guest at ``gfn``."""
    pfn, gfn = args
    if view.loaded is None:
        return ("no vCPU is loaded: __pkvm_host_map_guest maps into the guest of the loaded vCPU, with stage-2 tables "
                "from its memcache; __pkvm_vcpu_load(handle, vcpu_idx) first (vm.donate() does)") if err == E.EINVAL else None
    h = view.loaded[0]
    if err == E.EINVAL:
        if gfn >= 1 << (GUEST_IA_BITS - PAGE_SHIFT):
            return (f"gfn {gfn:#x} is outside the guest's {GUEST_IA_BITS}-bit IPA space "
                    f"(gfns below {1 << (GUEST_IA_BITS - PAGE_SHIFT):#x})")
        mc = _host_memcache(host, view)
        if mc is not None and mc[1] and mc[0] % PAGE:
            return (f"the memcache list of {_loaded_words(view)} starts at {mc[0]:#x}, not a page: hyp takes "
                    "whole pages from it (refill_memcache)")
        return _not_ram(host, pfn)
    if err == E.ENOMEM:
        mc = _host_memcache(host, view)
        if mc is not None and mc[1] == 0:
            return (f"the memcache of {_loaded_words(view)} is empty: hyp needs pages on it for the guest's stage-2 "
                    "tables (one per level below the PGD) before it maps; push host pages on the list in its "
                    "struct kvm_vcpu (topup_hyp_memcache; vm.donate() does) and call again")
        return (f"the memcache of {_loaded_words(view)} holds fewer pages than the guest's stage-2 tables this "
                f"mapping needs, or {POOL}")
    if err == E.EPERM:
        why = _not_owned(host, view, pfn)
        if why:
            return why
        held = view.gfns.get(h, {}).get(gfn)
        if held is not None:
            return f"gfn {gfn:#x} already holds a page in VM {h:#x}'s stage-2 (pfn {held:#x})"
        return None
    return None


def _vcpu_load(host, view, args, err):
    h, idx = args
    if err == E.ENOENT:
        return _handle_words(view, h)
    if err == E.EINVAL:
        vm = host.vms.get(h)
        n = f"it has {vm.nr_vcpus}" if vm is not None else "it has fewer"
        return f"VM {h:#x} has no vCPU {idx}: {n} (vcpu_idx counts from 0)"
    if err == E.EBUSY:
        what = _loaded_words(view) if view.loaded else "a vCPU"
        return f"{what} is already loaded on this CPU: __pkvm_vcpu_put() first"
    return None


def _teardown_shadow(host, view, args, err):
    if err == E.ENOENT:
        return _handle_words(view, args[0])
    if err == E.EBUSY and view.loaded and view.loaded[0] == args[0]:
        return (f"{_loaded_words(view)} is loaded: hyp holds a reference on the VM while it is; "
                "__pkvm_vcpu_put() first")
    return None


def _reclaim_page(host, view, args, err):
    (pfn,) = args
    if err == E.EINVAL:
        return _not_ram(host, pfn) or f"pfn {pfn:#x} is in the hypervisor's carve-out"
    if err == E.EPERM:
        return (f"pfn {pfn:#x} is not waiting to be reclaimed: only the pages of a torn-down guest are "
                "(__pkvm_teardown_shadow marks them)")
    return None


_EXPLAIN = {
    "__pkvm_host_share_hyp": _share_hyp,
    "__pkvm_host_unshare_hyp": _unshare_hyp,
    "__pkvm_init_shadow": _init_shadow,
    "__pkvm_teardown_shadow": _teardown_shadow,
    "__pkvm_vcpu_load": _vcpu_load,
    "__pkvm_host_map_guest": _map_guest,
    "__pkvm_host_reclaim_page": _reclaim_page,
}
