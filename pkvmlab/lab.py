"""The front door: ``lab = Lab()`` builds (cached) and boots the firmware, and hands you the host at EL1."""

from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape

from pkvmlab.errors import MachineError, UsageError
from pkvmlab.firmware import Firmware, load_firmware
from pkvmlab.first_use import announce
from pkvmlab.host import Host
from pkvmlab.host import kernel_image as K
from pkvmlab.inspect import Hyp
from pkvmlab.machine import RAM_BASE, RAM_SIZE, Core, coverage
from pkvmlab.machine.boot import boot
from pkvmlab.machine.interface import Machine

HYP_SIZE = 8 << 20
PAGE = 4096
# Which pKVM the firmware follows: Lab(era=...).
ERAS = {"seed": "pKVM of mid-2022 (the seed, firmware/)",
        "mainline": "mainline Linux today (firmware/mainline/)"}


@dataclass(frozen=True)
class Region:
    """A named range of physical memory, [start, end)."""

    name: str
    start: int
    end: int
    description: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start

    def __contains__(self, pa: int) -> bool:
        return self.start <= pa < self.end

    def __repr__(self) -> str:
        return f"Region({self.name!r}, {self.start:#x}-{self.end:#x})"


class MemoryMap(tuple):
    """The physical memory map, drawn as a table in a notebook."""

    def find(self, name: str) -> Region:
        for r in self:
            if r.name == name:
                return r
        raise KeyError(name)

    def region_of(self, pa: int) -> Region | None:
        """The most specific region containing ``pa``."""
        hits = [r for r in self if pa in r]
        return min(hits, key=lambda r: r.size) if hits else None

    def __repr__(self) -> str:
        rows = [f"{r.start:#012x}-{r.end:#012x} {r.size >> 10:>8} KiB  {r.name:<16} {r.description}" for r in self]
        return "\n".join(rows)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><code>{r.start:#x}</code></td><td><code>{r.end:#x}</code></td>"
                       f"<td style='text-align:right'>{r.size >> 10} KiB</td><td><b>{escape(r.name)}</b></td>"
                       f"<td>{escape(r.description)}</td></tr>" for r in self)
        return ("<table><thead><tr><th>start</th><th>end</th><th>size</th><th>region</th><th>what</th>"
                f"</tr></thead><tbody>{rows}</tbody></table>")


class Lab:
    """A booted machine: ``lab.core`` (the CPU), ``lab.host`` (you, at EL1), ``lab.hyp`` (EL2's state)."""

    def __init__(self, *, ram_size: int = RAM_SIZE, hyp_size: int = HYP_SIZE, firmware: Firmware | str | None = None,
                 native: bool | None = None, history: bool = False, backend: str = "unicorn",
                 spec_check: bool | None = None, era: str = "seed"):
        if backend not in ("unicorn", "qemu"):
            raise UsageError(f"backend is 'unicorn' (the lab's core) or 'qemu' (pkvmlab.machine.qemu), not {backend!r}")
        if era not in ERAS:
            raise UsageError(f"era is one of {', '.join(map(repr, ERAS))} ({'; '.join(ERAS.values())}), not {era!r}")
        if history and backend == "qemu":   # refused before QEMU starts: nothing to kill afterwards
            from pkvmlab.machine.qemu import needs_unicorn

            raise needs_unicorn("Lab(history=True) (time travel: lab.checkpoint, undo, history)")
        repository_firmware = firmware is None   # the spec checks the repository's trees only, never an edited copy
        if firmware is None and era == "mainline":
            from pkvmlab.firmware.build import MAINLINE_DIR

            firmware = MAINLINE_DIR
        self.hyp_size = hyp_size
        self.core: Machine   # the CPU: Unicorn's Core or QEMU's QemuCore, one interface (pkvmlab/machine/interface.py)
        host_image = RAM_BASE + hyp_size
        with announce(firmware, native):   # the first Lab() on a machine compiles for several seconds: say so
            self.fw = firmware if isinstance(firmware, Firmware) else load_firmware(firmware)
            if self.fw.era != era and not (firmware is not None and era == "seed"):
                raise UsageError(f"Lab(era={era!r}) was given a firmware of the {self.fw.era} era: "
                                 f"pass era={self.fw.era!r}, or a firmware tree of the {era} era")
            self.era = self.fw.era
            if backend == "unicorn":
                self.core = Core(RAM_BASE, ram_size, native=native)
        if backend == "qemu":   # QEMU loads the images and boots through its shim (firmware/qemu/shim.s)
            from pkvmlab.machine.qemu import QemuCore

            self.core = QemuCore.boot(self.fw, ram_size=ram_size, hyp_size=hyp_size, host_image=host_image,
                                      host_image_bytes=K.build_image(), host_entry=host_image + K.ENTRY,
                                      vbar_el1=host_image + K.VECTORS, sp_el1=host_image + K.IMAGE_PAGES * PAGE,
                                      timer_stubs={"arm": (host_image + K.TIMER_ARM, host_image + K.stub_end(K.TIMER_ARM)),
                                                   "disarm": (host_image + K.TIMER_DISARM,
                                                              host_image + K.stub_end(K.TIMER_DISARM))})
        else:
            self.core.phys.write(host_image, K.build_image())   # the host kernel's text, as a boot loader would
            coverage.attach(self.core, self.fw)   # PKVMLAB_COVERAGE=<dir> or coverage.measure(): count hyp's blocks
            boot(self.core, self.fw, hyp_size=hyp_size, host_entry=host_image + K.ENTRY)
        self.backend = backend
        self.host = Host(self.core, host_image, self.fw)
        self.host.setup()
        self.core.watch_host(host_image, RAM_BASE + ram_size)   # the watchdog never stops the CPU inside EL2
        # A protected guest's code runs at whatever VAs its own stage 1 gives it (its IPAs from 0 with the MMU
        # off): the watchdog and the guest run's budget (pkvmlab/host/vcpu_run.py) see its blocks everywhere
        # but in the hypervisor's own image, whose blocks then pay no hook.
        self.core.watch_all_except(RAM_BASE, self.fw.symbol("__hyp_image_end"))
        self.hyp = Hyp(self.core, self.fw, self)
        version, el, _ = self.hyp_info()
        if el != 2:
            raise MachineError(f"the hypervisor's info call ran at EL{el}, not EL2")
        self.version = version
        self._timeline = None
        self._spec_checker = None
        if spec_check is None:   # the test suite can run everything checked: PKVMLAB_SPEC_CHECK=1
            # (the repository's firmware only: an edited copy is there to misbehave, and to be caught on request)
            spec_check = repository_firmware and os.environ.get("PKVMLAB_SPEC_CHECK", "") not in ("", "0")
        self.spec_check = spec_check
        if history:
            self.timeline   # noqa: B018 - start recording now: step 0 is the freshly booted lab

    def close(self) -> None:
        """Release the machine (on the QEMU backend: kill QEMU); a Unicorn core is freed by the GC anyway."""
        self.core.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the executable specification (pkvmlab/spec/) ----------------------------------------
    @property
    def spec_check(self) -> bool:
        """True: every host hypercall is checked against ``pkvmlab.spec`` (SpecMismatch if it disagrees)."""
        return self._spec_checker is not None

    @spec_check.setter
    def spec_check(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise UsageError(f"lab.spec_check takes True or False, got {on!r}")
        if on and self._spec_checker is None:
            from pkvmlab.spec.checker import SpecChecker

            self._spec_checker = SpecChecker(self)
        elif not on and self._spec_checker is not None:
            self._spec_checker.remove()
            self._spec_checker = None

    # -- time travel (pkvmlab/timeline.py) ------------------------------------------------------
    @property
    def timeline(self):
        """The recorder behind checkpoints and history; started by the first use (or ``Lab(history=True)``).

        From then on every store is journaled (a hook), so hypercalls cost a little more.
        """
        if self._timeline is None:
            from pkvmlab.timeline import Timeline

            self._timeline = Timeline(self)
        return self._timeline

    def checkpoint(self):
        """The whole lab now: registers, RAM, the host model.  ``lab.restore(cp)`` comes back to it."""
        return self.timeline.checkpoint()

    def restore(self, cp) -> None:
        """Back to checkpoint ``cp``; checkpoints taken after it become invalid (``lab.goto(cp)`` replays to them)."""
        self.timeline.restore(cp)

    @property
    def history(self):
        """Every host action since the timeline started, one step each; ``▶`` marks where you are."""
        return self.timeline.history

    def undo(self) -> None:
        """Back one step."""
        self.timeline.undo()

    def redo(self) -> None:
        """Forward one step (replayed if its checkpoint was rewound past)."""
        self.timeline.redo()

    def goto(self, step) -> None:
        """To step ``step`` of ``lab.history`` (or to a Checkpoint), restoring or replaying as needed."""
        self.timeline.goto(step)

    def diff(self, a: int, b: int):
        """What changed in ownership and in the VM table (the seed's shadow table, mainline's vm_table) from step ``a``
        to step ``b``."""
        return self.timeline.diff(a, b)

    def retrace(self, step: int):
        """Trace step ``step`` of ``lab.history`` again (going back to just before it): a Trace."""
        return self.timeline.retrace(step)

    def trace(self, action):
        """Run ``action()`` (one host action) and record its execution at EL2, line by line: a Trace."""
        from pkvmlab.inspect.trace import trace

        return trace(self, action)

    def hyp_info(self) -> tuple[int, int, int]:
        """``__pkvm_hyp_info``: (firmware version, CurrentEL the handler saw, free hyp pool pages)."""
        return self.host.hyp_info()

    @property
    def memory_map(self) -> MemoryMap:
        fw, base = self.fw, RAM_BASE
        image_end = fw.symbol("__hyp_image_end")
        pool = _page_align(image_end + (self.core.ram_size // PAGE) * fw.layout("hyp_page").size)
        hyp_end = base + self.hyp_size
        host_image = hyp_end
        return MemoryMap((
            Region("RAM", base, base + self.core.ram_size, "all of physical memory"),
            Region("hyp", base, hyp_end, "the hypervisor's carve-out: the host may never touch it"),
            Region("hyp image", base, image_end, "EL2 code, data, stacks (firmware/)"),
            Region("hyp vmemmap", image_end, pool, "a refcount per page of RAM"),
            Region("hyp pool", pool, hyp_end, "pages for hyp's page tables and the shadow table"),
            Region("host kernel", host_image, host_image + K.IMAGE_PAGES * PAGE, "the host model's stubs, vectors, stack"),
            Region("host RAM", host_image + K.IMAGE_PAGES * PAGE, base + self.core.ram_size,
                   "what the host's page allocator hands out"),
        ))

    def __repr__(self) -> str:
        return (f"Lab(firmware {self.version >> 16}.{self.version & 0xFFFF}, RAM {self.core.ram_size >> 20} MiB at "
                f"{RAM_BASE:#x}, hyp carve-out {self.hyp_size >> 20} MiB, host at EL{self.core.current_el})")


def _page_align(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)
