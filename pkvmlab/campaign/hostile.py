"""The campaign's hostile rules: calls a sane host never makes, each one a refusal the specification predicts.

Pages in the carve-out or past RAM, wrapped handles, a vCPU loaded twice, a teardown while loaded, a
memcache list naming pages the host may not give, map_guest at a taken gfn or past the IPA space, a shadow
area whose last page is not the host's, a second VM on a live ``struct kvm``, taking back a page given
away.  A mixin of :class:`pkvmlab.campaign.rules` 's machine: the same helpers (``do``, ``pick``, ``raw``,
``loaded``) and the same bookkeeping.  Imports nothing of the machine's file (it imports this one): the rules
arrive as arguments, the helpers through ``self``.
"""

from __future__ import annotations

from pkvmlab.errors import HypercallError

PAGE = 4096
HANDLES = (0, 0xFFF, 0x1000, 0x1001, 0x1002, 0x1003, 0x10FE, 0x10FF, (1 << 32) + 0x1000, (1 << 64) - 1)
GFNS = (0, 1, 2, 3, 0x200, 0x40000, (1 << 28) - 1, 1 << 28, 1 << 36)   # map_guest's gfns: plain ones and hostile ones
SIZES = (0, 1, PAGE - 1, PAGE, 2 * PAGE, 3 * PAGE, 1 << 40)


def hostile_rules(st, rule, precondition, recorded, idx):
    """The hostile rules as a mixin class (hypothesis collects rules from every base of the machine)."""
    from pkvmlab.host.vcpu_run import VcpuRunner

    class Hostile:
        @rule(h=st.sampled_from(HANDLES))
        @recorded
        def teardown_raw(self, h):
            def go():
                self.raw("__pkvm_teardown_shadow", h)
                gone = [vm for vm in self.vms if vm.handle == (h & 0xFFFFFFFF)]
                for vm in gone:   # the host model lost track of it: forget it too, but reclaim its pages later
                    self.vms.remove(vm)
                    self.host.vms.pop(vm.handle, None)
                    self.pending += list(vm.mapped_pages.values())
            self.do(f"host.call('__pkvm_teardown_shadow', {h:#x})", go)

        @rule(i=idx, gfn=st.sampled_from(GFNS))
        @recorded
        def map_guest_unloaded(self, i, gfn):
            """Hostile: map_guest with no vCPU loaded."""
            pfn = self.pick(i)
            self.do(f"host.call('__pkvm_host_map_guest', {pfn:#x}, {gfn:#x})",
                    lambda: self.raw("__pkvm_host_map_guest", pfn, gfn))

        @precondition(lambda self: self.vms)
        @rule(v=idx, bad=st.sampled_from(("unaligned", "carveout", "guest", "self")))
        @recorded
        def memcache_hostile(self, v, bad):
            """Hostile: the host's memcache list names a page it may not give (unaligned, hyp's, a guest's, itself)."""
            vm = self.vms[v % len(self.vms)]
            r = VcpuRunner(vm, 0)
            at = r._field("arch.pkvm_memcache.head")
            cfg = self.lab._spec_abstraction.config
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)
            head = {"unaligned": pfn * PAGE + 8, "carveout": (cfg.carveout[0] + 3) * PAGE,
                    "guest": (next(iter(vm.mapped_pages.values()), pfn)) * PAGE, "self": vm.vcpus[0]}[bad]

            def go():
                old = (self.host.read_u64(at), self.host.read_u64(at + 8))
                self.host.write_u64(at, head)
                self.host.write_u64(at + 8, 1)
                try:
                    self.loaded(vm, 0, lambda: self.raw("__pkvm_host_map_guest", pfn, 0x3FF))
                    vm.mapped_pages[0x3FF] = pfn
                    self.pages.remove(pfn)
                finally:
                    if self.host.read_u64(at) == head:   # hyp did not take it: put the host's list back
                        self.host.write_u64(at, old[0])
                        self.host.write_u64(at + 8, old[1])
                    else:
                        vm.memcache_pages.append(head // PAGE)
            self.do(f"host memcache of VM {vm.handle:#x} vCPU 0 -> [{head:#x}]; load; map_guest({pfn:#x}, 0x3ff); put",
                    go)

        @rule(h=st.sampled_from(HANDLES), k=st.sampled_from((0, 1, 2, 7, 8, 1 << 32)))
        @recorded
        def vcpu_load_raw(self, h, k):
            """Hostile: load with any handle and index (put again if it worked)."""
            def go():
                self.raw("__pkvm_vcpu_load", h, k)
                self.raw("__pkvm_vcpu_put")
            self.do(f"host.call('__pkvm_vcpu_load', {h:#x}, {k:#x}); put", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, w=idx)
        @recorded
        def while_loaded(self, v, w):
            """Hostile: with a vCPU loaded, load another (-EBUSY), tear its VM down (-EBUSY) and another VM (which
            may go); then put, and run with nothing loaded (-EINVAL)."""
            vm, other = self.vms[v % len(self.vms)], self.vms[w % len(self.vms)]

            def hostile():
                for call in (lambda: self.raw("__pkvm_vcpu_load", other.handle, 0),
                             lambda: self.raw("__pkvm_teardown_shadow", vm.handle)):
                    try:
                        call()
                    except HypercallError:
                        pass
                if other is not vm:
                    self.raw("__pkvm_teardown_shadow", other.handle)
                    self.vms.remove(other)
                    self.host.vms.pop(other.handle, None)
                    self.pending += list(other.mapped_pages.values())

            def go():
                self.loaded(vm, 0, hostile)
                self.raw("__kvm_vcpu_run")
            self.do(f"load({vm.handle:#x}, 0); load({other.handle:#x}, 0); teardown({vm.handle:#x})"
                    + (f"; teardown({other.handle:#x})" if other is not vm else "") + "; put; run", go)

        @precondition(lambda self: any(vm.mapped_pages for vm in self.vms))
        @rule(v=idx, i=idx, what=st.sampled_from(("share", "map_again", "touch", "reclaim")))
        @recorded
        def steal_guest_page(self, v, i, what):
            """Hostile: the host tries to take back (share, map elsewhere, touch, reclaim) a page it gave a guest."""
            vms = [vm for vm in self.vms if vm.mapped_pages]
            vm = vms[v % len(vms)]
            pfns = sorted(vm.mapped_pages.values())
            pfn = pfns[i % len(pfns)]
            if what == "share":
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            elif what == "map_again":
                self.do(f"load({vm.handle:#x}, 0); map_guest({pfn:#x}, 0x7); put",
                        lambda: self.loaded(vm, 0, lambda: self.raw("__pkvm_host_map_guest", pfn, 7)))
            elif what == "reclaim":
                self.do(f"host.call('__pkvm_host_reclaim_page', {pfn:#x})",
                        lambda: self.raw("__pkvm_host_reclaim_page", pfn))
            else:
                self.touch_pfn(pfn)

        @precondition(lambda self: any(vm.mapped_pages for vm in self.vms))
        @rule(v=idx, i=idx)
        @recorded
        def map_guest_taken_gfn(self, v, i):
            """Hostile: a fresh host page at a gfn that already holds one."""
            vms = [vm for vm in self.vms if vm.mapped_pages]
            vm = vms[v % len(vms)]
            gfns = sorted(vm.mapped_pages)
            gfn, pfn = gfns[i % len(gfns)], self.host.alloc_pages(1)
            self.pages.append(pfn)
            self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put",
                    lambda: self.loaded(vm, 0, lambda: (VcpuRunner(vm, 0).topup_memcache(),
                                                        self.raw("__pkvm_host_map_guest", pfn, gfn))))

        @rule(k=idx, s=idx, size=st.sampled_from(SIZES), p=idx, koff=st.sampled_from((0, 0, 8, 4, PAGE - 8)))
        @recorded
        def init_shadow_hostile(self, k, s, size, p, koff):
            kvm, sva, pgd = self.pick(k) * PAGE + koff, self.pick(s) * PAGE, self.pick(p) * PAGE

            def go():
                h = self.host.init_shadow(kvm, sva, size, pgd)
                self.host.teardown_shadow(h)   # nobody on the host side knows this VM: end it at once
            self.do(f"host.init_shadow({kvm:#x}, {sva:#x}, {size:#x}, {pgd:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, n=st.integers(2, 3))
        @recorded
        def init_shadow_last_page_shared(self, v, n):
            """Hostile: a second VM on a live VM's ``struct kvm``, its shadow area of fresh pages but the last
            one shared with hyp: refused at the donation (-ENOMEM), and that page must stay as it was."""
            vm = self.vms[v % len(self.vms)]
            sva, pgd = self.host.alloc_pages(n), self.host.alloc_pages(2, align=2)
            self.pages += [sva, pgd, sva + n - 1]

            def go():
                self.host.share_hyp(sva + n - 1)
                h = self.host.init_shadow(vm.host_kvm, sva * PAGE, n * PAGE, pgd * PAGE)
                self.host.teardown_shadow(h)
            self.do(f"host.share_hyp({sva + n - 1:#x}); host.init_shadow({vm.host_kvm:#x}, {sva * PAGE:#x}, "
                    f"{n * PAGE:#x}, {pgd * PAGE:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, d=st.integers(-1, 1))
        @recorded
        def map_guest_at_the_ipa_bound(self, v, d):
            """Hostile: a fresh page just below, at or just past the end of the guest's IPA space."""
            vm = self.vms[v % len(self.vms)]
            cfg = self.lab._spec_abstraction.config
            gfn = (1 << (cfg.guest_ipa_bits - 12)) + d
            pfn = self.host.alloc_pages(1)
            self.pages.append(pfn)

            def go():
                def mapped():
                    VcpuRunner(vm, 0).topup_memcache()
                    self.raw("__pkvm_host_map_guest", pfn, gfn)
                    vm.mapped_pages[gfn] = pfn
                    self.pages.remove(pfn)
                self.loaded(vm, 0, mapped)
            self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, n=st.integers(1, 3))
        @recorded
        def init_shadow_again(self, v, n):
            """The host asks for a second VM on a ``struct kvm`` that already has one, with fresh pages."""
            vm = self.vms[v % len(self.vms)]
            sva, pgd = self.host.alloc_pages(n), self.host.alloc_pages(2, align=2)
            self.pages += [sva, pgd]
            size = n * PAGE

            def go():
                h = self.host.init_shadow(vm.host_kvm, sva * PAGE, size, pgd * PAGE)
                self.host.teardown_shadow(h)
            self.do(f"host.init_shadow({vm.host_kvm:#x}, {sva * PAGE:#x}, {size:#x}, {pgd * PAGE:#x})", go)

        @precondition(lambda self: self.vms)
        @rule(v=idx, which=idx)
        @recorded
        def unshare_pinned(self, v, which):
            """Hostile: take back the struct kvm or a vCPU of a live VM, which hyp has pinned."""
            vm = self.vms[v % len(self.vms)]
            pages = [vm.host_kvm >> 12, *(x >> 12 for x in vm.vcpus)]
            pfn = pages[which % len(pages)]
            self.do(f"host.unshare_hyp({pfn:#x})", lambda: self.host.unshare_hyp(pfn))

        @rule(how=st.sampled_from(("map_guest", "share")))
        @recorded
        def give_away_touched(self, how):
            """The host uses a page, gives it away, and touches it again: the second touch must fault (or not)."""
            pfn = self.host.alloc_pages(1)
            self.touch_pfn(pfn)
            if how == "share" or not self.vms:
                self.pages.append(pfn)
                self.do(f"host.share_hyp({pfn:#x})", lambda: self.host.share_hyp(pfn))
            else:
                vm = self.vms[0]
                gfn = 0x100 + len(vm.mapped_pages)

                def go():
                    def mapped():
                        VcpuRunner(vm, 0).topup_memcache()
                        self.raw("__pkvm_host_map_guest", pfn, gfn)
                        vm.mapped_pages[gfn] = pfn
                    self.loaded(vm, 0, mapped)
                self.do(f"load({vm.handle:#x}, 0); topup; map_guest({pfn:#x}, {gfn:#x}); put", go)
            self.touch_pfn(pfn)

    return Hostile
