"""Protected VMs as the host kernel makes them: ``struct kvm`` and vCPUs in host memory, then ``__pkvm_init_shadow``.

The host's steps, in order (what ``pkvm_create_hyp_vm`` does upstream, with the seed's names):

1. allocate a page for ``struct kvm`` and one per ``struct kvm_vcpu``, fill them with EL1 stores
   (layouts from the firmware's DWARF, never typed twice: :mod:`pkvmlab.host.kvm_structs`);
2. share those pages with hyp (``__pkvm_host_share_hyp``): hyp pins them while the VM lives;
3. allocate the shadow area (``PAGE_ALIGN(sizeof(struct kvm_shadow_vm) + n * sizeof(struct
   kvm_shadow_vcpu_state))``) and the stage-2 PGD (``kvm_pgtable_stage2_pgd_size``: 2 pages), and
   write the array of vCPU pointers into the PGD: the seed passes it there "as to not to be
   dependent on how the VCPU's are layed out in struct kvm" (hyp maps the PGD without clearing,
   checks the array fits in it, reads it, then zeroes the PGD for the guest's stage 2);
   ``__pkvm_init_shadow`` takes both by donation and returns the handle;
4. record the handle in ``kvm->arch.pkvm.shadow_handle`` (a store to a shared page).

upstream: the seed, [PATCH v2 12/24] "KVM: arm64: Introduce shadow VM state at EL2", __pkvm_init_shadow
(arch/arm64/kvm/hyp/nvhe/pkvm.c).  In mainline today each vCPU has its own hypercall instead
(``__pkvm_init_vm`` then ``__pkvm_init_vcpu`` per vCPU, same file).

Teardown is the reverse: ``__pkvm_teardown_shadow`` gives back the shadow area, the PGD, the guest's
stage-2 tables and its unused memcache pages (zeroed) and marks each guest page for reclaim; the host takes
each one back with ``__pkvm_host_reclaim_page`` (hyp zeroes it first if the guest owned it), then unshares and
frees its own structures.
"""

from __future__ import annotations

from pkvmlab.errors import HypercallError, UsageError
from pkvmlab.host.kvm_structs import PAGE, _padded, host_layouts, set_kvm_field, write_kvm, write_vcpu


class VM:
    """A protected VM the host created: its handle and everything the host gave for it."""

    def __init__(self, host, handle: int, nr_vcpus: int, host_kvm: int, vcpus: tuple[int, ...],
                 shadow_va: int, shadow_size: int, pgd: int, pgd_size: int):
        self.host, self.handle, self.nr_vcpus = host, handle, nr_vcpus
        self.host_kvm, self.vcpus = host_kvm, vcpus
        self.shadow_va, self.shadow_size = shadow_va, shadow_size
        self.pgd, self.pgd_size = pgd, pgd_size
        self.alive = True
        # A guest that runs (pkvmlab/host/vcpu_run.py): its program, and what the host gave it while running.
        self.guest: str | None = None
        self.image = b""
        self.mapped_pages: dict[int, int] = {}   # gfn -> pfn, given with __pkvm_host_map_guest: reclaimed one by one
        self.shared_gfns: set[int] = set()       # what the guest's MEM_SHARE / MEM_UNSHARE exits told the host
        self.memcache_pages: list[int] = []      # pfns pushed on a vCPU memcache (hyp's, or still the host's)
        self.console_bytes = bytearray()
        self.powered_off = False
        self._runners: dict[int, object] = {}

    @property
    def index(self) -> int:
        return self.handle - 0x1000

    def donate(self, gfn: int, pfn: int | None = None) -> int:
        """Give the guest a page at ``gfn``, as the host does on a guest's stage-2 fault; allocates one unless ``pfn``
        is given.  Returns the pfn.

        The hypercalls, in order: ``__pkvm_vcpu_load(handle, 0)`` unless a vCPU of this VM is loaded already
        (``__pkvm_host_map_guest`` works on the loaded vCPU); ``__pkvm_host_map_guest(pfn, gfn)``;
        ``__pkvm_vcpu_put()`` if it loaded the vCPU.  Before the map the host tops up that vCPU's memcache to
        ``kvm_mmu_cache_min_pages`` (2: a table per level below the PGD) by pushing its own pages on the list in
        its ``struct kvm_vcpu``; hyp takes them by donation (``refill_memcache``) for the guest's stage-2 tables.
        The page is donated, not shared: the host faults on it from now on.  It is kept with the pages demand
        faults gave (``mapped_pages``): after teardown the host takes each back with ``__pkvm_host_reclaim_page``,
        which zeroes it first (unless the guest had shared it).

        upstream: the v1 series (May 2022) and the Android common kernel of 2022,
        ``handle___pkvm_host_map_guest`` (arch/arm64/kvm/hyp/nvhe/hyp-main.c), which refills the vCPU's memcache
        (``pkvm_refill_memcache``) and calls ``__pkvm_host_donate_guest(pfn, gfn, vcpu)`` for a protected VM
        (nvhe/mem_protect.c); the host kernel calls it from its guest stage-2 fault path after ``topup_hyp_memcache``
        (arch/arm64/kvm/mmu.c: ``pkvm_mem_abort`` -> ``pkvm_host_map_guest``).
        """
        from pkvmlab.host.vcpu_run import MEMCACHE_TOPUP, VcpuRunner

        self._check_alive("donate a page to")
        if type(gfn) is not int or gfn < 0:
            raise UsageError(f"donate() takes a guest frame number (an int >= 0), got {gfn!r}")
        loaded = self.host.loaded_vcpu
        if loaded is not None and loaded[0] != self.handle:
            raise UsageError(f"vCPU {loaded[1]} of VM {loaded[0]:#x} is loaded: {self.map_call_name()} maps into the "
                             f"loaded vCPU's VM; put it first (lab.host.call(\"__pkvm_vcpu_put\"))")
        own = pfn is None
        if own:
            pfn = self.host.alloc_pages(1)
        else:
            self.host._keep_own_image(pfn, 1, self.map_call_name())
        idx = 0 if loaded is None else loaded[1]
        runner = self._runners.get(idx) or VcpuRunner(self, idx)
        have = self.host.read_u64(runner._field("arch.pkvm_memcache.nr_pages"))
        if have < MEMCACHE_TOPUP:   # topup_hyp_memcache(): the host's list up to kvm_mmu_cache_min_pages
            runner.topup_memcache(MEMCACHE_TOPUP - have)
        try:
            if loaded is None:
                self.host.call("__pkvm_vcpu_load", self.handle, idx)
            try:
                self.map_call(pfn, gfn)
            finally:
                if loaded is None:
                    self.host.call("__pkvm_vcpu_put")
        except HypercallError:
            if own:
                self.host.free_pages(pfn)
            raise
        self.mapped_pages[gfn] = pfn
        return pfn

    def map_call(self, pfn: int, gfn: int) -> None:
        """The hypercall that gives the guest of the loaded vCPU the page ``pfn`` at ``gfn`` (a demand fault)."""
        self.host.call("__pkvm_host_map_guest", pfn, gfn)

    def map_call_name(self) -> str:
        """The name of ``map_call``'s hypercall, for messages."""
        return "__pkvm_host_map_guest"

    @property
    def guest_pages(self) -> dict[int, int]:
        """gfn -> pfn of every page the host gave this guest (``donate()`` and demand faults alike)."""
        return self.mapped_pages

    @guest_pages.setter
    def guest_pages(self, pages: dict[int, int]) -> None:
        self.mapped_pages = pages

    # -- running it (pkvmlab/host/vcpu_run.py) ------------------------------------------------
    def _runner(self, vcpu_idx: int):
        from pkvmlab.host.vcpu_run import VcpuRunner

        self._check_alive("run")
        if self.guest is None:
            raise UsageError("this VM has no guest program: create it with lab.host.create_vm(guest=\"hello\")")
        if not isinstance(vcpu_idx, int) or not 0 <= vcpu_idx < self.nr_vcpus:
            raise UsageError(f"vcpu_idx must be 0..{self.nr_vcpus - 1}, got {vcpu_idx!r}")
        r = self._runners.get(vcpu_idx)
        if r is None:   # the runner this vCPU had before, if any: one the user holds stays the vCPU's across time travel
            r = self.__dict__.setdefault("_runner_objs", {}).get(vcpu_idx)
            if r is None:
                r = self._runner_objs[vcpu_idx] = VcpuRunner(self, vcpu_idx)
            else:
                r.__init__(self, vcpu_idx)
            self._runners[vcpu_idx] = r
        return r

    def set_entry(self, pc: int, sp_el1: int, vcpu_idx: int = 0) -> None:
        """The guest's entry PC and stack for vCPU ``vcpu_idx``, before its first load (hyp reads them then, once).

        Afterwards it is refused: hyp's shadow vCPU is the only copy that counts (pKVM too takes PC and x0 from the
        host's vCPU once, when the VM is created, and resets the vCPU itself: ``init_shadow_structs``,
        ``pkvm_reset_vcpu``, nvhe/pkvm.c, Android 2022)."""
        r = self._runner(vcpu_idx)
        for name, v in (("pc", pc), ("sp_el1", sp_el1)):
            if not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise UsageError(f"{name} must be an int in [0, 2**64), got {v!r}")
        if r.ever_loaded:
            raise UsageError(f"vCPU {vcpu_idx} of VM {self.handle:#x} has been loaded already: hyp took its entry then "
                             "and only hyp's copy counts now; set the entry on a new VM before its first step")
        r.set_entry(pc, sp_el1)

    def step(self, vcpu_idx: int = 0, *, budget: int | None = None):
        """One ``__kvm_vcpu_run`` and the host's handling of its exit: returns that Exit."""
        from pkvmlab.host.vcpu_run import DEFAULT_BUDGET

        with self.host.core.lock:
            self._check_alive("run")
            if self.powered_off:
                raise UsageError(f"the guest of VM {self.handle:#x} has powered off: tear the VM down")
            return self._runner(vcpu_idx).step(DEFAULT_BUDGET if budget is None else budget)

    def run(self, vcpu_idx: int = 0, *, budget: int | None = None, max_exits: int = 10_000) -> list:
        """The host's KVM_RUN loop: run, service page faults (page requests too), MMIO and the guest's MEM_SHARE /
        MEM_UNSHARE exits, until the guest powers off, makes a call the host does not know, or its budget is spent.
        Returns the exits, oldest first."""
        from pkvmlab.host.vcpu_run import DEFAULT_BUDGET

        out = []
        with self.host.core.lock:
            self._check_alive("run")
            if self.powered_off:
                raise UsageError(f"the guest of VM {self.handle:#x} has powered off: tear the VM down")
            r = self._runner(vcpu_idx)
            r.load()   # loaded once for the whole loop, as a vCPU thread stays scheduled in
            try:
                for _ in range(max_exits):
                    ex = r.step(DEFAULT_BUDGET if budget is None else budget)
                    out.append(ex)
                    if ex.reason not in ("page fault", "mmio", "mem share", "mem unshare"):
                        break
            finally:
                r.put()
        return out

    @property
    def exits(self) -> list:
        """Every exit so far, of every vCPU, oldest first."""
        return [e for r in self._runners.values() for e in r.exits]

    @property
    def console(self) -> str:
        """What the guest printed on its UART."""
        return self.console_bytes.decode("utf-8", "replace")

    def teardown(self) -> None:
        """``__pkvm_teardown_shadow``, then unshare and free what the host gave."""
        self._check_alive("tear down")
        teardown_vm(self.host, self.handle)

    def _check_alive(self, what: str) -> None:
        elsewhere = self.__dict__.get("_elsewhere")   # set by a restore to before it was made (pkvmlab.timeline)
        if elsewhere:
            raise UsageError(f"cannot {what} VM {self.handle:#x}: {elsewhere}")
        if not self.alive:
            raise UsageError(f"cannot {what} VM {self.handle:#x}: it was torn down")

    def __repr__(self) -> str:
        state = ", in another point in time" if self.__dict__.get("_elsewhere") else "" if self.alive else ", torn down"
        vcpus = ", ".join(f"{v:#x}" for v in self.vcpus)
        return (f"VM(handle={self.handle:#x}, {self.nr_vcpus} vCPU{'s' if self.nr_vcpus != 1 else ''}, "
                f"kvm at {self.host_kvm:#x}, vcpus at [{vcpus}], shadow area {self.shadow_va:#x} "
                f"({self.shadow_size >> 10} KiB), pgd {self.pgd:#x}, {len(self.guest_pages)} guest page(s){state})")


def write_vcpu_array(host, pgd: int, vcpus: tuple[int, ...]) -> None:
    """Write the host's vCPU pointers at the start of the PGD it is about to donate (the seed's way to pass them)."""
    data = b"".join(v.to_bytes(8, "little") for v in vcpus)
    host.write(pgd, data + bytes(_padded(len(data)) - len(data)))


def create_vm(host, nr_vcpus: int = 2, guest: str | None = None) -> VM:
    """What the host kernel does to create a protected VM; returns the VM, registered in ``host.vms``.

    ``guest``: the name of a program in ``firmware/guests/`` for it to run (``vm.run()``).
    """
    lay = host_layouts(host)
    image = b""
    if guest is not None:
        from pkvmlab.firmware.guests import guest_image

        image = guest_image(guest)
    if not isinstance(nr_vcpus, int) or not 1 <= nr_vcpus <= lay.max_vcpus:
        raise UsageError(f"create_vm needs 1..{lay.max_vcpus} vCPUs (KVM_MAX_VCPUS), got {nr_vcpus!r}; "
                         f"to see hyp refuse a bad count, call lab.host.init_shadow() with raw arguments")
    given: list[tuple[int, int]] = []     # (pfn, nr) allocated
    shared: list[int] = []                # pfns shared with hyp
    try:
        kvm_pfn = host.alloc_pages(1)
        given.append((kvm_pfn, 1))
        vcpu_pfns = []
        for _ in range(nr_vcpus):
            vcpu_pfns.append(host.alloc_pages(1))
            given.append((vcpu_pfns[-1], 1))
        kvm, vcpus = kvm_pfn * PAGE, tuple(p * PAGE for p in vcpu_pfns)
        kvm_buf = write_kvm(host, lay, kvm, nr_vcpus, vcpus)
        for i, v in enumerate(vcpus):
            write_vcpu(host, lay, v, kvm, i)
        for pfn in (kvm_pfn, *vcpu_pfns):
            host.share_hyp(pfn)
            shared.append(pfn)
        shadow_size = lay.shadow_size(nr_vcpus)
        shadow_pfn = host.alloc_pages(shadow_size // PAGE)
        given.append((shadow_pfn, shadow_size // PAGE))
        pgd_pfn = host.alloc_pages(lay.pgd_pages, align=lay.pgd_pages)   # concatenated tables: size-aligned
        given.append((pgd_pfn, lay.pgd_pages))
        write_vcpu_array(host, pgd_pfn * PAGE, vcpus)
        handle = host.init_shadow(kvm, shadow_pfn * PAGE, shadow_size, pgd_pfn * PAGE)
    except BaseException:
        still_shared = _unshare_all(host, reversed(shared))
        for pfn, nr in reversed(given):
            if pfn not in still_shared:
                host.free_pages(pfn, nr)
        raise
    set_kvm_field(host, lay, kvm, kvm_buf, "kvm.arch.pkvm.shadow_handle", handle)   # as kvm->arch.pkvm.shadow_handle = ret
    vm = VM(host, handle, nr_vcpus, kvm, vcpus, shadow_pfn * PAGE, shadow_size, pgd_pfn * PAGE,
            lay.pgd_pages * PAGE)
    host.vms[handle] = vm
    if guest is not None:
        from pkvmlab.host.vcpu_run import GUEST_MEM_SIZE, VcpuRunner

        vm.guest, vm.image = guest, image
        for i in range(nr_vcpus):   # entry at IPA 0, the stack at the top of the guest's memory
            VcpuRunner(vm, i).set_entry(0, GUEST_MEM_SIZE)
    return vm


def teardown_vm(host, handle: int) -> None:
    """``__pkvm_teardown_shadow(handle)``; then the host unshares its kvm and vCPUs and frees every page it gave."""
    vm = host.vms.get(handle)
    if vm is None:
        raise UsageError(f"the host has no VM with handle {handle:#x}; live: {[hex(h) for h in host.vms]}; "
                         f"to send hyp a raw handle, call lab.host.teardown_shadow()")
    host.teardown_shadow(handle)
    del host.vms[handle]
    vm.alive = False
    # Back from hyp: the shadow area, the PGD and the guest's pages (zeroed) are the host's again.
    host.free_pages(vm.shadow_va // PAGE, vm.shadow_size // PAGE)
    host.free_pages(vm.pgd // PAGE, vm.pgd_size // PAGE)
    # The guest's pages (donate() and demand faults): hyp marked them for reclaim; each owned one is zeroed (a shared
    # one not), then the host's.
    for pfn in vm.mapped_pages.values():
        host.call("__pkvm_host_reclaim_page", pfn)
        host.free_pages(pfn)
    for pfn in vm.memcache_pages:   # tables and unused memcache pages came back at teardown
        host.free_pages(pfn)
    unshare_host_structs(host, vm)


def unshare_host_structs(host, vm) -> None:
    """The last step of a teardown: the host unshares its ``struct kvm`` and vCPUs (hyp unpinned them) and frees them;
    one hyp refuses to unshare stays shared and allocated, and its refusal is raised after the others are done."""
    pfns = [addr // PAGE for addr in (vm.host_kvm, *vm.vcpus)]
    still_shared = _unshare_all(host, pfns)
    for pfn in pfns:
        if pfn not in still_shared:
            host.free_pages(pfn)
    if still_shared:
        raise next(iter(still_shared.values()))


def _unshare_all(host, pfns) -> dict[int, HypercallError]:
    """Unshare each page; one that hyp refuses stays shared and allocated (as the kernel would WARN and leak it)."""
    failed = {}
    for pfn in pfns:
        try:
            host.unshare_hyp(pfn)
        except HypercallError as e:
            failed[pfn] = e
    return failed
