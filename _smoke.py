import time
from pkvmlab import Lab
from pkvmlab.machine import coverage as M
from pkvmlab.inspect.coverage import Coverage
from pkvmlab.inspect.error_paths import error_paths, unreached
t=time.time()
with M.measure(era="mainline") as c:
    lab = Lab(era="mainline")
    seedlab = Lab()
print("hooks", hasattr(seedlab.core, "coverage_hooks"), len(lab.core.coverage_hooks))
pfn = lab.host.alloc_pages(1); lab.host.share_hyp(pfn); lab.host.unshare_hyp(pfn)
vm = lab.host.create_vm(1, guest="share"); vm.run()
cov = Coverage(c.copy())
print(cov, cov.era)
print(cov.summary())
e = error_paths(cov); m = unreached(cov)
print(len(e), len(m))
print([str(x) for x in m if not x.reason][:5])
print(time.time()-t)
