import time
from pkvmlab import Lab
from pkvmlab.firmware.guests import guest_symbols
t=time.time()
lab = Lab()
vm = lab.host.create_vm(1, guest='canary')
at = guest_symbols('canary')['canary_params'][0]
img = bytearray(vm.image); img[at:at+8]=(0x1234567).to_bytes(8,'little'); img[at+8:at+16]=(0x987654321).to_bytes(8,'little'); vm.image=bytes(img)
print(time.time()-t)
for i in range(40):
    ex = vm.step(0, budget=20000)
    print(ex)
    if vm.powered_off: break
print(time.time()-t)
from pkvmlab.inspect.vcpu_regs import register_views
rv = register_views(lab, vm, 0, vm.exits[-1] if hasattr(vm,'exits') else None)
print(repr(rv)[:3000]); print(rv.hidden())
