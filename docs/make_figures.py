"""Draw the README's example diagrams from a real booted lab (``make docs``): nothing here is hand-made.

Writes docs/shadow_table.svg, docs/ownership_map.png (all of RAM), docs/ownership_map_zoom.png (a
few pages, each labelled), docs/translation.svg (a guest stage-2 walk to a page) and
docs/translation_fault.svg (a host stage-2 walk into hyp's memory).  The emulator is deterministic,
so rerunning on the same versions rewrites the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from pkvmlab import Lab, viz  # noqa: E402

DOCS = Path(__file__).resolve().parent


def scenario() -> tuple[Lab, object]:
    """Three protected VMs (the middle one torn down), guest pages and a share: something to see."""
    lab = Lab()
    vms = [lab.host.create_vm(n) for n in (2, 1, 2)]
    vms[1].teardown()
    for gfn in (0x100, 0x101, 0x12345):
        vms[0].donate(gfn)
    vms[2].donate(0x80)
    lab.host.share_hyp(lab.host.alloc_pages(1))
    lab.host.read_u64(0x6000_0000)
    return lab, vms[0]


def main() -> int:
    lab, vm = scenario()
    png = {"dpi": 110, "metadata": {"Software": None}}
    (DOCS / "shadow_table.svg").write_bytes(viz.shadow_table(lab.hyp.shadow_table()).pipe("svg"))
    own = lab.hyp.ownership()
    viz.ownership_map(own).savefig(DOCS / "ownership_map.png", **png)
    start = vm.host_kvm
    viz.ownership_map(own, start, start + 16 * 4096, vms=lab.hyp.shadow_table()).savefig(DOCS / "ownership_map_zoom.png",
                                                                                   **png)
    walk = lab.hyp.walk((0x12345 << 12) + 0x2a8, stage="guest-s2", vm=vm)
    (DOCS / "translation.svg").write_bytes(viz.translation(walk).pipe("svg"))
    fault = lab.hyp.walk(vm.shadow_va, stage="host-s2", access="w")
    (DOCS / "translation_fault.svg").write_bytes(viz.translation(fault).pipe("svg"))
    for name in ("shadow_table.svg", "ownership_map.png", "ownership_map_zoom.png", "translation.svg",
                 "translation_fault.svg"):
        print(f"wrote docs/{name} ({(DOCS / name).stat().st_size >> 10} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
