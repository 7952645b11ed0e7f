"""What the VM builder shows of a guest that runs: its console and its exits, as HTML.

Pure, like ``render``: a VM's ``console`` (what its UART printed) and its ``exits``
(``pkvmlab.host.vcpu_run.Exit``: the reason in words, the decoded ESR, the IPA, the MMIO access, a
hypercall's x0) in, a string for an ipywidgets ``HTML`` out.  Each exit shows only what the host was
told (``handle_pvm_exit_*`` in arch/arm64/kvm/hyp/nvhe/hyp-main.c, 2022 Android tree): the syndrome
with the register number masked, the fault's page offset and HPFAR, an MMIO write's value.
"""

from __future__ import annotations

from html import escape

# The guest programs a learner can pick when creating a VM (firmware/guests/), "none" first.
GUEST_CHOICES = ("none", "hello", "secret", "share", "touch", "spin")
_REASON_COLORS = {"page fault": "#1565c0", "mmio": "#6a1b9a", "hypercall": "#ef6c00", "system off": "#2e7d32",
                  "preempted": "#5d4037", "unhandled": "#b71c1c"}
_BOX = "border:1px solid #ddd;border-radius:4px;overflow:auto"


def guest_choices() -> list[str]:
    """GUEST_CHOICES that exist in this tree's firmware/guests/ ("none" always)."""
    try:
        from pkvmlab.firmware.guests import guest_names

        have = set(guest_names())
    except Exception:  # noqa: BLE001 - no guests at all: only "none"
        have = set()
    return [g for g in GUEST_CHOICES if g == "none" or g in have]


def console_html(vm, max_height: str = "140px") -> str:
    """``vm.console`` in a monospace box (or why there is none)."""
    if vm is None:
        body = "<i style='color:#777'>select a VM to see its console</i>"
    elif getattr(vm, "guest", None) is None:
        body = (f"<i style='color:#777'>VM {vm.handle:#x} has no guest program (created with guest "
                "<code>none</code>): nothing runs, nothing prints</i>")
    elif not vm.console and not getattr(vm, "exits", None):
        body = f"<i style='color:#777'>nothing printed yet by <code>{escape(vm.guest)}</code>: press Run or Step</i>"
    elif not vm.console:
        n = len(vm.exits)
        body = (f"<i style='color:#777'><code>{escape(vm.guest)}</code> printed nothing in its {n} exit"
                f"{'s' if n != 1 else ''} so far (a guest prints by storing to the UART: an MMIO exit); "
                "what it did is in its exits below</i>")
    else:
        body = (f"<pre style='margin:0;white-space:pre-wrap;font-size:12px;line-height:1.3'>{escape(vm.console)}</pre>")
    off = " · <b>powered off</b> (PSCI SYSTEM_OFF)" if vm is not None and getattr(vm, "powered_off", False) else ""
    return (f"<div class='pkvmlab-console' style='{_BOX};max-height:{max_height};padding:4px 8px;background:#fafafa'>"
            f"{body}</div>" + (f"<div style='font-size:12px;color:#555'>{off[3:]}</div>" if off else ""))


DOORBELL = 0xC6000040   # PKVMLAB_GUEST_DOORBELL_FUNC_ID (firmware/guests/guest.h): the lab's guests ring the host


def _hypercall(e) -> str:
    """A call hyp passed on to the host: the lab's doorbell in words, any other call with what the host did."""
    if e.hvc is not None and e.hvc[0] == DOORBELL:
        return ("the guest rang the host (PKVMLAB_GUEST_DOORBELL, x1..x3 = " + ", ".join(f"{v:#x}" for v in e.hvc[1:])
                + "): a call the host model does not implement, on purpose, so the run stops here for you to look; "
                "running on, the guest gets x0 = -1 (SMCCC_RET_NOT_SUPPORTED) back")
    x0 = f"{e.hvc[0]:#x}" if e.hvc is not None else "?"
    return f"the guest called x0 = {x0}, which hyp passed on to the host; the host: {e.handled}"


# What happened at an exit, in words, by the exit's kind (``Exit.reason``); the exit's own fields fill it in.
# A kind not listed here shows what the host model says it did (``Exit.handled``).
_HAPPENED = {
    "hypercall": _hypercall,
    "page fault": lambda e: f"the guest touched a page it did not have yet; the host {e.handled}",
    "system off": lambda e: "the guest powered off (PSCI SYSTEM_OFF): it will not run again",
    "preempted": lambda e: "the lab's timer ran out (an IRQ): the guest is stopped between two instructions; "
                           "Run or Step goes on",
}


def exit_words(e) -> str:
    """One exit, what happened, in words (for a status line): its kind, then what the host was told and did."""
    happened = _HAPPENED.get(e.reason)
    return f"{e.reason}: {happened(e) if happened else e.handled or '—'}"


def _told(e) -> str:
    """What the host was told about one exit, in words."""
    parts = []
    if e.mmio is not None:
        m = e.mmio
        parts.append(f"MMIO {'write' if m.write else 'read'} of {m.size} byte{'s' if m.size != 1 else ''} "
                     f"at IPA <code>{m.ipa:#x}</code>, value <code>{m.value:#x}</code>"
                     + (f" ({escape(repr(chr(m.value)))})" if m.write and 32 <= m.value < 127 else ""))
    elif e.ipa is not None:
        parts.append(f"IPA <code>{e.ipa:#x}</code>")
    if e.hvc is not None:
        parts.append(f"x0 = <code>{e.hvc[0]:#x}</code>")
    if e.pc is not None:
        parts.append(f"guest PC <code>{e.pc:#x}</code> (the lab's timer knows it; the host is not told)")
    return "; ".join(parts) or "—"


def _did(e) -> str:
    happened = _HAPPENED.get(e.reason)
    return happened(e) if happened else e.handled


def exit_log_html(exits, limit: int = 60, mark_from: int | None = None, max_height: str = "260px") -> str:
    """A VM's exits, newest first: number, reason, what the host was told, ESR decoded, what the host did.

    Exits from ``mark_from`` on (the last click's) are marked.
    """
    exits = list(exits)
    if not exits:
        return (f"<div class='pkvmlab-exit-log' style='{_BOX};padding:4px 8px'><i style='color:#777'>no exits yet"
                "</i></div>")
    rows = []
    for i in range(len(exits) - 1, max(len(exits) - limit, 0) - 1, -1):
        e = exits[i]
        new = mark_from is not None and i >= mark_from
        color = _REASON_COLORS.get(e.reason, "#333")
        masked = " (hyp masked the register number: the host sees x0)" if e.mmio is not None else ""
        esr = (f"<code>{e.esr:#x}</code> {escape(e.esr_words)}{masked}" if e.esr is not None
               else "<i>none: an IRQ (the timer), not a trap</i>" if e.reason == "preempted" else "—")
        rows.append(f"<tr style='{'background:#fffde7' if new else ''}'>"
                    f"<td style='text-align:right;vertical-align:top;white-space:nowrap'>{'▶ ' if new else ''}{i}</td>"
                    f"<td style='vertical-align:top;color:{color};white-space:nowrap'><b>{escape(e.reason)}</b></td>"
                    f"<td style='vertical-align:top'>{_told(e)}</td>"
                    f"<td style='vertical-align:top'>{esr}</td>"
                    f"<td style='vertical-align:top'>{escape(_did(e))}</td></tr>")
    more = (f"<div style='font-size:12px;color:#555'>… {len(exits) - limit} older exit(s): <code>vm.exits</code></div>"
            if len(exits) > limit else "")
    return (f"<div class='pkvmlab-exit-log' style='{_BOX};max-height:{max_height}'>"
            "<table style='font-size:12px;border-collapse:collapse;width:100%;table-layout:auto'>"
            "<thead><tr style='text-align:left'><th>#</th><th>exit</th><th>what the host was told</th>"
            "<th>ESR_EL2 as the host sees it</th><th>what the host did</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>{more}")


def vm_label(handle: int, vm) -> str:
    """One line of the live-VM list: handle, vCPUs, pages, and its guest program and state."""
    pages = len(vm.guest_pages)   # every page the host gave it: vm.donate() and demand faults alike
    guest = getattr(vm, "guest", None)
    run = ""
    if guest is not None:
        run = f"  ·  {guest}" + (", off" if vm.powered_off else f", {len(vm.exits)} exit(s)" if vm.exits else "")
    kind = "  ·  non-protected" if getattr(vm, "protected", True) is False else ""   # mainline's __pkvm_host_share_guest
    return f"{handle:#x}{kind}  ·  {vm.nr_vcpus} vCPU(s)  ·  {pages} guest page(s){run}"
