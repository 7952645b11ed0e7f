import time
from pkvmlab import Lab
from pkvmlab.inspect.tlb_maintenance import TlbMaintenance
lab = Lab()
t = TlbMaintenance(lab)
print("tlbis", len(t.log._hooks)-1, "tags", t._tags.keys())
h = lab.host
pfns = [h.alloc_pages(1) for _ in range(4)]
for p in pfns:
    h.read_u64(p<<12)
for p in pfns:
    h.share_hyp(p)
for p in pfns:
    h.unshare_hyp(p)
print(t.check(), t.calls, t.stores)
vm = h.create_vm(1, guest="share")
print(t.check(), t._tags.keys())
for _ in range(6):
    if vm.powered_off: break
    vm.run(0, budget=5000)
print(t.check(), t.calls, t.stores)
h.teardown_vm(vm.handle)
print(t.check(), t.calls, t.stores, t._tags.keys())
