import sys
from pkvmlab import Lab, mutants
from pkvmlab.firmware import load_firmware
from pkvmlab.inspect.tlb_maintenance import TlbMaintenance
for name in sys.argv[1:]:
    fw = load_firmware(mutants.build(name))
    lab = Lab(firmware=fw)
    t = TlbMaintenance(lab)
    h = lab.host
    found = []
    pfns = [h.alloc_pages(1) for _ in range(4)]
    for p in pfns:
        h.read_u64(p<<12)
    for p in pfns:
        h.share_hyp(p)
    found += t.check()
    for p in pfns:
        h.unshare_hyp(p)
    found += t.check()
    vm = h.create_vm(1, guest="share")
    for _ in range(6):
        if vm.powered_off: break
        vm.run(0, budget=5000)
    found += t.check()
    h.teardown_vm(vm.handle)
    found += t.check()
    print(name, len(found))
    for v in found[:3]: print("   ", v)
