"""The dashboards, driven as a learner would: set values, click(), read what they show.  No kernel, no browser."""

from __future__ import annotations

import re
import shutil

import pytest

from pkvmlab import Lab
from pkvmlab.widgets import TranslationExplorer, VMBuilder, render

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


def _viz_missing(name: str) -> str:
    """Why ``pkvmlab.viz.<name>`` cannot draw yet (its module has not landed), or "" when it can be called."""
    import pkvmlab.viz

    try:
        getattr(pkvmlab.viz, name)(None)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("pkvmlab"):
            return str(exc)
    except Exception:  # noqa: BLE001 - it exists and choked on None: fine
        pass
    return ""


needs_ownership_map = pytest.mark.skipif(bool(_viz_missing("ownership_map")), reason="viz.ownership_map has not landed")
needs_shadow_diagram = pytest.mark.skipif(bool(_viz_missing("shadow_table")), reason="viz.shadow_table has not landed")


def words(html: str) -> str:
    """The text of some HTML, entities decoded: what a reader sees."""
    import html as h

    return h.unescape(re.sub(r"<[^>]+>", " ", html))


def status_kind(widget) -> str:
    m = re.search(r"pkvmlab-status-(\w+)", widget.status.value)
    return m.group(1) if m else ""


@pytest.fixture
def builder(lab) -> VMBuilder:
    return VMBuilder(lab)


# -- VMBuilder -----------------------------------------------------------------------------------

def test_builder_starts_empty(builder: VMBuilder) -> None:
    assert builder.handles == [] and builder.selected is None
    assert status_kind(builder) == "info"
    assert "no hypercalls yet" in builder.hypercall_log.value
    assert repr(builder) == "VMBuilder(0 live VM(s), 0 hypercall(s) logged)"
    assert builder.snapshot is not None and len(builder.snapshot) == 0


@needs_dot
@needs_shadow_diagram
def test_create_shows_the_handle_everywhere(builder: VMBuilder, lab) -> None:
    builder.vcpus.value, builder.pages.value = 2, 2
    builder.create_button.click()
    assert status_kind(builder) == "ok", words(builder.status.value)
    assert "created VM 0x1000 with 2 vCPU(s) and 2 guest pages at gfn 0-1" in words(builder.status.value)
    assert builder.handles == [0x1000] and builder.vm_list.value == 0x1000
    assert builder.selected is lab.host.vms[0x1000]
    assert "<svg" in builder.diagram.value and "0x1000" in builder.diagram.value
    assert "<?xml" not in builder.diagram.value          # inline SVG: no XML prologue inside HTML
    [shadow] = builder.snapshot.vms
    assert (shadow.handle, shadow.vmid, shadow.nr_vcpus, len(shadow.guest_pages)) == (0x1000, 1, 2, 2)
    assert "2 guest page(s)" in builder.vm_list.options[0][0]   # the list counts what hyp's table maps, no more
    log = words(builder.hypercall_log.value)
    assert log.count("__pkvm_host_share_hyp") == 3      # struct kvm and two vCPUs
    assert "__pkvm_init_shadow" in log and "handle 0x1000" in log
    # vm.donate(): __pkvm_host_map_guest on vCPU 0, loaded around it (the host topped up its memcache first)
    assert log.count("__pkvm_host_map_guest") == 2 and "-ENOMEM" not in log and "gfn=0x1" in log
    assert log.count("__pkvm_vcpu_load") == log.count("__pkvm_vcpu_put") == 2
    assert builder.gfn.value == "0x2"                    # the next free gfn is suggested


def test_create_redraws_the_ownership_map_of_host_ram_in_use(builder: VMBuilder, lab) -> None:
    """The map of host RAM in use is HTML tiles: every page its own tile, the VM's pages named, counts linear."""
    before = builder.ownership_view.value
    assert before.count("pkvmlab-tile") == 32
    builder.pages.value = 16
    builder.create_button.click()
    view = builder.ownership_view.value
    assert view != before
    start, end = builder.map_range
    assert start == lab.host.pages.start_pfn * 4096
    assert end > max(lab.host.vms[0x1000].guest_pages.values()) * 4096
    assert view.count("pkvmlab-tile") == (end - start) // 4096
    text = words(view)
    for name in ("VM 0x1000 kvm", "VM 0x1000 vcpu 1", "VM 0x1000 shadow", "VM 0x1000 pgd", "VM 0x1000 gfn 0xf"):
        assert name in text


def test_with_many_vms_the_map_shows_the_selected_vms_pages(builder: VMBuilder, lab) -> None:
    for _ in range(20):
        lab.host.create_vm(2)
    builder.refresh()
    builder.vm_list.value = 0x1010
    builder.refresh()
    view = words(builder.ownership_view.value)
    assert builder.ownership_view.value.count("pkvmlab-tile") == 64
    assert "VM 0x1010 kvm" in view and "of the" in view and "pages handed out so far" in view


def test_teardown_with_nothing_selected_is_an_error_in_words(builder: VMBuilder, lab) -> None:
    builder.teardown_button.click()                      # must not raise
    assert status_kind(builder) == "error"
    assert "select a VM" in words(builder.status.value)
    assert lab.host.log == []


def test_create_with_zero_vcpus_is_refused_in_the_widget(builder: VMBuilder, lab) -> None:
    builder.vcpus.value = 0
    builder.create_button.click()
    assert status_kind(builder) == "error"
    assert "1..8 vCPUs" in words(builder.status.value)
    assert builder.handles == [] and lab.host.vms == {}


def test_a_refused_hypercall_shows_its_errno_in_words(builder: VMBuilder, lab) -> None:
    builder.pages.value = 1
    builder.create_button.click()
    builder.gfn.value = "0"                              # the guest already has gfn 0
    assert builder.donate_button.click() is None
    status = words(builder.status.value)
    assert status_kind(builder) == "error"
    assert "__pkvm_host_map_guest" in status and "-EPERM (Operation not permitted)" in status
    call, args, result = lab.host.log[-2]                # then __pkvm_vcpu_put
    assert (call, args[1:], result) == ("__pkvm_host_map_guest", (0,), -1)
    assert "-EPERM (Operation not permitted)" in words(builder.hypercall_log.value)
    assert "gfn 0x0 already holds a page in VM 0x1000's stage-2" in status     # which check refused, in words


def test_donate_then_teardown(builder: VMBuilder, lab) -> None:
    builder.pages.value = 0
    builder.create_button.click()
    builder.donate_button.click()
    assert "choose at least one guest page" in words(builder.status.value)
    builder.pages.value = 3
    builder.donate_button.click()
    assert "gave 3 page(s) to VM 0x1000 at gfn 0x0-0x2" in words(builder.status.value)
    assert sorted(lab.host.vms[0x1000].guest_pages) == [0, 1, 2] and builder.gfn.value == "0x3"
    assert builder.teardown_button.description == "Tear down 0x1000"
    builder.teardown_button.click()
    assert status_kind(builder) == "ok" and "tore down VM 0x1000" in words(builder.status.value)
    assert builder.handles == [] and builder.snapshot.vms == ()
    assert lab.host.log[-1][0] == "__pkvm_host_unshare_hyp"


def test_donate_with_nothing_selected(builder: VMBuilder) -> None:
    builder.donate_button.click()
    assert status_kind(builder) == "error" and "select a VM" in words(builder.status.value)


def test_several_vms_and_round_robin_slots(builder: VMBuilder, lab) -> None:
    for _ in range(3):
        builder.create_button.click()
    assert builder.handles == [0x1000, 0x1001, 0x1002] and builder.vm_list.value == 0x1002
    builder.vm_list.value = 0x1001
    builder.teardown_button.click()
    assert builder.handles == [0x1000, 0x1002] and builder.vm_list.value is None
    builder.create_button.click()
    assert builder.vm_list.value == builder.handles[-1] == lab.hyp.shadow_table().vms[-1].handle
    assert sorted(lab.host.vms) == builder.handles


def test_refresh_sees_what_notebook_cells_did(builder: VMBuilder, lab) -> None:
    vm = lab.host.create_vm(1)
    builder.refresh_button.click()
    assert builder.handles == [vm.handle]
    assert "1 live VM(s)" in words(builder.status.value)     # Refresh says what it found
    builder.vm_list.value = vm.handle
    builder._seen = lab.host.changes + 1000              # as if it had not noticed: a stale view
    lab.host.teardown_vm(vm.handle)                      # behind the widget's back
    builder.teardown_button.click()
    assert status_kind(builder) == "error" and "is gone" in words(builder.status.value)
    assert builder.handles == []                         # the list was redrawn after the error


def test_nothing_escapes_a_click(builder: VMBuilder, lab, monkeypatch) -> None:
    def boom(nr_vcpus):
        raise RuntimeError("the host kernel had a bad day")

    monkeypatch.setattr(lab.host, "create_vm", boom)
    builder.create_button.click()
    assert status_kind(builder) == "error"
    assert "RuntimeError: the host kernel had a bad day" in words(builder.status.value)


def test_after_a_hyp_panic_the_buttons_say_so_and_switch_off(builder: VMBuilder, lab) -> None:
    from pkvmlab import HypPanic

    with pytest.raises(HypPanic):
        lab.core.call_symbol("memset", 0x1000, 0, 8)    # hyp writes where it has no mapping: the machine dies
    builder.create_button.click()
    assert status_kind(builder) == "error" and "create a new Lab()" in words(builder.status.value)
    assert builder.create_button.disabled and builder.donate_button.disabled and builder.teardown_button.disabled
    assert not builder.refresh_button.disabled


def test_a_diagram_that_cannot_be_drawn_falls_back_to_the_table(builder: VMBuilder, lab, monkeypatch) -> None:
    import pkvmlab.viz

    def no_dot(snap, **kw):
        raise RuntimeError("dot is not installed")

    monkeypatch.setattr(pkvmlab.viz, "shadow_table", no_dot)
    builder.create_button.click()
    assert status_kind(builder) == "ok"
    text = words(builder.diagram.value)
    assert "not available" in text and "dot is not installed" in text and "0x1000" in text


# -- VMBuilder: a guest that runs (Run, Step, console, exit log) -----------------------------------

def inline(html: str) -> str:
    """The text of some HTML with inline tags dropped (no space added where <code> was)."""
    import html as h

    return h.unescape(re.sub(r"<[^>]+>", "", html))


def newest_exit(builder: VMBuilder) -> str:
    return inline(builder.exit_log.value.split("<tbody>")[1].split("</tr>")[0])


def create_guest(builder: VMBuilder, guest: str, vcpus: int = 1) -> None:
    builder.vcpus.value, builder.guest.value = vcpus, guest
    builder.create_button.click()
    assert status_kind(builder) == "ok", words(builder.status.value)


def test_the_guest_dropdown_offers_the_lab_guests_and_none_first(builder: VMBuilder) -> None:
    assert list(builder.guest.options) == ["none", "hello", "secret", "share", "touch", "spin"]
    assert builder.guest.value == "none"
    assert builder.donate_button.description == "Give pages"
    assert "__pkvm_host_map_guest" in builder.donate_button.tooltip


def test_run_hello_prints_its_text_in_the_console_and_logs_every_exit(builder: VMBuilder, lab) -> None:
    create_guest(builder, "hello")
    vm = lab.host.vms[0x1000]
    assert vm.guest == "hello" and vm.guest_pages == {}          # its pages come on demand
    assert "running the guest 'hello'" in words(builder.status.value)
    assert "nothing printed yet" in words(builder.console.value) and "no exits yet" in words(builder.exit_log.value)
    builder.run_button.click()
    assert status_kind(builder) == "ok"
    assert "Hello from a protected guest!" in words(builder.console.value) and "powered off" in words(builder.console.value)
    log = builder.exit_log.value
    assert log.split("<tbody>")[1].count("</tr>") == len(vm.exits)
    assert len(vm.exits) == int(re.search(r"ran: (\d+) exits", words(builder.status.value))[1])
    assert "system off" in newest_exit(builder)                 # newest first
    assert "page fault" in inline(log) and "Instruction Abort from a lower Exception level" in inline(log)
    assert "MMIO write of 1 byte at IPA 0x9000000, value 0x48 ('H')" in inline(log)
    assert "hyp masked the register number" in inline(log)
    assert "VM 0x1000 gfn 0x0" in words(builder.ownership_view.value)   # the page hyp mapped, redrawn
    from test_viz_guest_pages import svg_words

    assert "hyp's view: not loaded · last exit: trap" in svg_words(builder.diagram.value)
    assert "hello, off" in builder.vm_list.options[0][0]


def test_run_shows_each_exit_in_the_console_and_exit_log_as_it_comes(builder: VMBuilder, lab) -> None:
    """During one Run the exit log gains a row per exit and the console grows a character at a time, before the run returns."""
    create_guest(builder, "hello")
    rows, consoles = [], []
    builder.exit_log.observe(lambda ch: rows.append(ch["new"].split("<tbody>")[1].count("</tr>")), "value")
    builder.console.observe(lambda ch: consoles.append(words(ch["new"])), "value")
    builder.run_button.click()
    exits = lab.host.vms[0x1000].exits
    assert rows[:len(exits)] == list(range(1, len(exits) + 1))          # one more row after each exit, in order
    text = "Hello from a protected guest!"
    shown = [next((n for n in range(len(text), -1, -1) if text[:n] in c), 0) for c in consoles]
    assert shown == sorted(shown) and len(set(shown)) > len(text) // 2   # the text appeared bit by bit


def test_step_spin_shows_its_preemption_as_an_exit(builder: VMBuilder, lab) -> None:
    create_guest(builder, "spin")
    builder.step_button.click()                                 # its first fetch faults: a page
    assert "page fault" in words(builder.status.value)
    diagram = builder.diagram.value
    builder.step_button.click()                                 # then it loops until the budget runs out
    assert "stepped: exit: preempted" in words(builder.status.value)
    row, last = newest_exit(builder), lab.host.vms[0x1000].exits[-1]
    assert "preempted" in row and f"guest PC {last.pc:#x}" in row and "an IRQ (the timer), not a trap" in row
    from test_viz_guest_pages import svg_words

    assert builder.diagram.value != diagram and "last exit: IRQ (preempted) 2 runs" in svg_words(builder.diagram.value)
    builder.run_button.click()                                  # Run ends at the preemption too: it never hangs
    assert "1 exit, the last: preempted" in words(builder.status.value)


def test_run_errors_are_shown_in_words_and_change_nothing(builder: VMBuilder, lab) -> None:
    builder.run_button.click()                                  # nothing selected
    assert status_kind(builder) == "error" and "select a VM" in words(builder.status.value)
    builder.pages.value = 1
    create_guest(builder, "none")
    calls = len(lab.host.log)
    builder.step_button.click()                                 # a VM with no program
    assert status_kind(builder) == "error" and "has no guest program" in words(builder.status.value)
    assert len(lab.host.log) == calls and "has no guest program" in words(builder.console.value)
    create_guest(builder, "hello")
    builder.run_button.click()
    calls, exits, console = len(lab.host.log), len(lab.host.vms[0x1001].exits), builder.console.value
    builder.run_button.click()                                  # powered off: refused before any hypercall
    assert status_kind(builder) == "error" and "has powered off" in words(builder.status.value)
    assert (len(lab.host.log), len(lab.host.vms[0x1001].exits), builder.console.value) == (calls, exits, console)


def test_the_busy_state_covers_run_and_step(builder: VMBuilder, lab, monkeypatch) -> None:
    create_guest(builder, "hello")
    vm, seen = lab.host.vms[0x1000], {}
    real = vm.step

    def step(*a, **kw):
        seen["disabled"] = [b.disabled for b in builder.buttons]
        seen["status"] = words(builder.status.value)
        return real(*a, **kw)

    monkeypatch.setattr(vm, "step", step)
    builder.step_button.click()
    assert seen["disabled"] == [True] * 6 and "⏳ stepping VM 0x1000 …" in seen["status"]
    assert not builder.run_button.disabled and status_kind(builder) == "ok"


def test_undo_a_run_in_the_builder_then_run_again_gives_the_same_console_and_exits(builder: VMBuilder, lab) -> None:
    create_guest(builder, "hello")
    builder.run_button.click()
    console, log = builder.console.value, words(builder.exit_log.value)
    builder.timeline.undo_button.click()                        # before the run: nothing printed, no exits
    assert builder.vm_list.value == 0x1000                      # the VM lived then: still selected
    assert "nothing printed yet" in words(builder.console.value) and "no exits yet" in words(builder.exit_log.value)
    builder.run_button.click()
    assert builder.console.value == console
    assert words(builder.exit_log.value).replace("▶ ", "") == log.replace("▶ ", "")


# -- TranslationExplorer ---------------------------------------------------------------------------

@needs_dot
def test_explorer_walks_host_ram_and_agrees_with_the_cpu(lab) -> None:
    t = TranslationExplorer(lab)
    host_ram = lab.memory_map.find("host RAM").start
    assert t.addr == host_ram and t.stage.value == "host-s2"
    assert t.walk.ok and t.walk.output == host_ram
    assert t.at_result.ok and t.at_result.output == host_ram
    assert "<svg" in t.walk_view.value and "agrees with the software walk" in words(t.at_view.value)
    assert "AT S12E1R" in words(t.at_view.value) and "PAR_EL1" in t.at_view.value


def test_explorer_typed_address_faults_and_the_slider_follows(lab) -> None:
    t = TranslationExplorer(lab)
    t.address.value = "0x40000000"                       # the hypervisor's own memory
    assert not t.walk.ok and t.walk.fault.kind == "translation"
    assert not t.at_result.ok and t.at_result.fsc == t.walk.fault.fsc
    assert "Translation fault" in words(t.status.value) and "agrees" in words(t.at_view.value)
    assert t.slider.value == 0
    t.slider.value = 0x802                               # page 0x802 of RAM: host RAM again
    assert t.address.value == "0x40802000" and t.walk.ok
    t.access.value = "x"
    assert t.at_result is None and "no AT for an instruction fetch" in words(t.at_view.value)
    t.address.value = "not an address"
    assert status_kind(t) == "error" and "is not an address" in words(t.status.value)


def test_explorer_guest_stage2(lab) -> None:
    t = TranslationExplorer(lab, stage="guest-s2")
    assert status_kind(t) == "error" and "no protected VM" in words(t.status.value)
    vm = lab.host.create_vm(1)
    pfn = vm.donate(3)
    t.refresh_button.click()
    assert t.vm.value == vm.handle and not t.vm.disabled
    assert t.addr == 0x3000                              # starts at the guest's first page
    assert t.walk.ok and t.walk.output == pfn * 4096 and t.at_result.output == pfn * 4096
    assert t.show(0x4000) and not t.walk.ok             # gfn 4 was never donated


def test_explorer_hyp_stage1(lab) -> None:
    t = TranslationExplorer(lab)
    assert t.show(lab.memory_map.find("hyp image").start, stage="hyp-s1", access="w")
    assert t.vm.disabled
    assert not t.walk.ok and t.walk.fault.kind == "permission"   # hyp text is read-only
    assert "AT S1E2W" in words(t.at_view.value) and "agrees" in words(t.at_view.value)


# -- shared rendering helpers ----------------------------------------------------------------------

def test_render_helpers() -> None:
    assert render.format_result("__pkvm_init_shadow", 0x1000) == "handle 0x1000"
    assert render.format_result("__pkvm_host_share_hyp", -12) == "-ENOMEM (Cannot allocate memory)"
    assert render.format_result("__pkvm_host_share_hyp", 0) == "0 (ok)"
    assert render.format_args("__pkvm_host_map_guest", (0x40808, 0)) == "pfn=0x40808, gfn=0x0"
    assert render.log_text([("__pkvm_teardown_shadow", (0x1005,), -2)]) == \
        "__pkvm_teardown_shadow(shadow_handle=0x1005) -> -ENOENT (No such file or directory)"
    assert render.parse_address(" 0x4080_2000 ") == 0x40802000 and render.parse_address("12") == 12
    assert render.parse_address("0xzz") is None and render.parse_address("-1") is None
    assert render.svg_of('<?xml version="1.0"?>\n<!DOCTYPE svg>\n<!-- dot 2.43 -->\n<svg/>') == "<svg/>"
    assert 'width="100%"' in render.fit_svg('<svg width="100pt" height="50pt" viewBox="0 0 100 50">')
    assert "&lt;b&gt;" in render.status_html("error", "<b>")
    from pkvmlab.errors import HypercallError, HypPanic

    assert "make a new Lab()" in render.error_message(HypPanic("hyp_panic() at pkvm.c:42"))
    assert "-EEXIST (File exists)" in render.error_message(HypercallError("__pkvm_init_shadow", (1, 2, 3, 4), -17))
    assert "1 of 3 earlier" not in render.log_html([("x", (), 0)] * 3, limit=2)
    assert "1 earlier call(s) not shown" in render.log_html([("x", (), 0)] * 3, limit=2)


@pytest.mark.parametrize("widget", ["VMBuilder", "TranslationExplorer"])
def test_a_widget_without_a_booted_lab_says_how_to_make_one(widget):
    """Passing anything but a Lab gets a one-line UsageError naming the fix, not an AttributeError."""
    import pkvmlab.widgets as W
    from pkvmlab import UsageError

    with pytest.raises(UsageError, match=rf"lab = Lab\(\); {widget}\(lab\)") as ei:
        getattr(W, widget)(None)
    assert "\n" not in str(ei.value)


def test_calling_firmware_before_boot_says_to_boot_first():
    """A bare Core with no firmware refuses a firmware call with a one-line message saying what to do."""
    from pkvmlab import UsageError
    from pkvmlab.machine import Core

    with pytest.raises(UsageError, match="boot one first"):
        Core().call_symbol("memset", 0)


# -- the VM builder's timeline ---------------------------------------------------------------------

@needs_dot
@needs_shadow_diagram
def test_builder_undo_redo_and_slider_redraw_every_view_for_that_step(builder: VMBuilder, lab) -> None:
    """Undo / Redo / the slider inside the VM builder move the machine; the list, diagram, map and log follow."""
    from pkvmlab.widgets import TranslationExplorer

    explorer = TranslationExplorer(lab)
    builder.pages.value = 0
    builder.create_button.click()
    builder.create_button.click()
    tl = builder.timeline
    assert builder.handles == [0x1000, 0x1001] and tl.slider.max == 2 and tl.slider.value == 2
    assert "0x1001" in words(builder.diagram.value)
    tl.undo_button.click()                              # back to one VM: the second is gone everywhere
    assert lab.history.position == 1 and builder.handles == [0x1000] and tl.slider.value == 1
    assert "0x1001" not in words(builder.diagram.value) and "0x1000" in words(builder.diagram.value)
    assert "__pkvm_init_shadow" in words(builder.hypercall_log.value)
    assert words(builder.hypercall_log.value).count("__pkvm_init_shadow") == 1
    assert "at step 1 of 2 (after create_vm(2)" in words(builder.status.value)
    assert explorer._seen == lab.host.changes           # the explorer redrew for this step too
    tl.redo_button.click()
    assert builder.handles == [0x1000, 0x1001] and "0x1001" in words(builder.diagram.value)
    tl.slider.value = 0                                 # the start: no VM at all
    assert builder.handles == [] and builder.selected is None and not lab.host.vms
    assert "at step 0 of 2 (the start)" in words(builder.status.value) and tl.undo_button.disabled
    builder.create_button.click()                       # a new action from the past cuts the old future off
    assert builder.handles == [0x1000] and tl.slider.max == 1 and tl.redo_button.disabled


def test_a_guest_run_from_a_notebook_cell_redraws_the_console_and_exits(builder: VMBuilder, lab) -> None:
    from pkvmlab.widgets import sync

    vm = lab.host.create_vm(1, guest="hello")       # typed in a cell ...
    sync.after_cell()
    builder.vm_list.value = vm.handle               # the learner selects it
    vm.run()                                        # ... and runs it from another cell
    sync.after_cell()                               # IPython's post_run_cell fires
    assert "Hello from a protected guest!" in words(builder.console.value)
    assert "system off" in newest_exit(builder) and "changed from outside" in words(builder.status.value)


def test_at_gfn_never_moves_past_the_last_gfn_of_the_ipa_space():
    """Giving a page at the last gfn (0xfffffff, a 40-bit IPA space) leaves "at gfn" on a gfn the builder takes,
    and the note says why it went back, not on 0x10000000, which it would then refuse."""
    from pkvmlab.widgets.vm_builder import GFN_LIMIT

    lab = Lab(ram_size=64 << 20)
    builder = VMBuilder(lab)
    builder.vcpus.value, builder.pages.value = 1, 1
    assert builder.create() and builder.gfn.value == "0x1"
    builder.gfn.value = hex(GFN_LIMIT - 1)
    assert builder.donate(), words(builder.status.value)
    assert int(builder.gfn.value, 16) < GFN_LIMIT and builder.gfn.value == "0x1"
    assert "is the last" in words(builder.gfn_note.value)
    assert builder.donate() and 1 in lab.host.vms[0x1000].guest_pages


def test_a_share_guests_run_says_in_words_what_happened():
    """The share guest prints nothing and stops at its doorbell: the console says it printed nothing so far (not
    "press Run"), and the last exit says the guest rang the host, not a bare "not supported (x0 = -1)"."""
    lab = Lab(ram_size=64 << 20)
    builder = VMBuilder(lab)
    builder.vcpus.value, builder.guest.value = 1, "share"
    assert builder.create() and builder.run(), words(builder.status.value)
    console = words(builder.console.value)
    assert "press Run" not in console and "printed nothing in its" in console
    status, log = words(builder.status.value), words(builder.exit_log.value)
    assert "the guest rang the host (PKVMLAB_GUEST_DOORBELL" in status and "run stops here" in status
    assert "rang the host" in log
