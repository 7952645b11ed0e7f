"""A real browser runs the notebooks: JupyterLab (headless, a free localhost port) + Debian's Chromium via Playwright.

Notebook 7 (a temporary copy: JupyterLab autosaves): run all cells, click Create in the VM builder,
and check that the shadow-table diagram's SVG now shows the new VM's handle; then choose the guest
program ``hello``, Create, Run, and check that the console shows what it printed, the exit log its
exits and the shadow table hyp's view of its vCPU.  A screenshot of the dashboard goes to
docs/vm_builder.png for the README and notebook 7 (``git checkout docs/vm_builder.png`` after a run
unless the dashboard changed on purpose).

Notebooks 1-10, at 1440 x 900 with the file browser open (a notebook column of about 1,000 px),
as a learner sees them: after Run All, no output is a bare repr (``<Figure size ...>``,
``<graphviz...>``), every diagram's rendered width fits its output column, and SVG text is at least
~10 px high (bounding boxes of inline SVG text; for SVG shown as an image, its smallest font size
times the scale it is shown at).  A 1440 x 900 screenshot with each picture scrolled into view goes to
build/browser/ for a human to look at.  The server is
stopped in the fixture's teardown, pass or fail.

Notebook 8: after Run All, Trace in the hypercall stepper and the Timeline under it lists the traced call at
once; line steps are timed from the click to the new step on screen (printed, never a verdict); the folded
answers open on a click.  Notebook 7's picture of the dashboard is drawn small and captioned.

Needs ``/usr/bin/chromium`` (apt: ``chromium``) and ``playwright`` (pip); ``make test`` installs both.
Without them the test skips, unless PKVMLAB_REQUIRE_BROWSER=1 (set by ``make test``) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "07_vm_builder.ipynb"
CHROMIUM = os.environ.get("PKVMLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = ROOT / "docs" / "vm_builder.png"
FAILURE_SHOT = ROOT / "build" / "test_browser_failure.png"
SHOTS = ROOT / "build" / "browser"
LEARNER_VIEWPORT = {"width": 1440, "height": 900}
FIT_NOTEBOOKS = ["01_boot_and_exception_levels.ipynb", "02_stage2_translation.ipynb", "03_who_owns_this_page.ipynb",
                 "04_shadow_vm_table.ipynb", "05_protected_guest_memory.ipynb", "06_reviewing_the_patch.ipynb",
                 "07_vm_builder.ipynb", "08_inside_one_hypercall.ipynb", "09_a_protected_guest_runs.ipynb",
                 "10_checking_against_a_specification.ipynb", "11_then_and_now.ipynb"]
MIN_TEXT_PX = 10
BARE_REPR = r"^<(Figure size|graphviz\.|matplotlib\.|Digraph)"

SERVER_START_S = 90     # JupyterLab's first start builds nothing, but imports a lot
PAGE_LOAD_S = 90
RUN_ALL_S = 300         # a fresh kernel, Lab() (firmware cached by `make firmware`), the first diagrams; notebook 10's campaign
CLICK_S = 60

pytestmark = pytest.mark.slow


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("PKVMLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{why} (PKVMLAB_REQUIRE_BROWSER=1: `make test` should have installed it)")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own server on 127.0.0.1
        return r.read()


def _stop_server(proc: subprocess.Popen, base: str) -> None:
    """Shut the kernels down through the REST API, then SIGTERM (then SIGKILL) the server's own process group."""
    if proc.poll() is None:
        try:
            for kernel in json.loads(_get(f"{base}/api/kernels")):
                req = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", method="DELETE")
                urllib.request.urlopen(req, timeout=10).close()  # noqa: S310
        except (OSError, ValueError):
            pass
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
    # Kernels run in their own sessions: anything left of ours is reaped by the server's shutdown above.


@pytest.fixture
def jupyter_server(tmp_path: Path):
    """JupyterLab on a free 127.0.0.1 port over a copy of notebooks/, isolated from the user's Jupyter settings."""
    _need(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need(False, "playwright is not installed (pip install playwright)")
    try:   # the diagram the test looks at must exist (it lands with pkvmlab.viz); draw it once here
        from pkvmlab import Lab, viz

        viz.shadow_table(Lab().hyp.shadow_table())
    except (ModuleNotFoundError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError) and not (exc.name or "").startswith("pkvmlab"):
            raise
        pytest.skip(f"the shadow-table diagram is not there yet: {exc}")
    jupyter = Path(sys.executable).with_name("jupyter")
    _need(jupyter.exists(), f"{jupyter} is missing")
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    config = tmp_path / "jupyter-config"
    (config / "labconfig").mkdir(parents=True)
    # No "Jupyter news" toast over the page, no update checks.
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    # Every cell in the DOM (JupyterLab 4 skips rendering cells out of view), so every output can be measured.
    tracker = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log_path = tmp_path / "jupyter.log"
    proc, base = _start_server([str(jupyter), "lab", "--no-browser", "--IdentityProvider.token=", "--ServerApp.ip=127.0.0.1",
                                "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
                                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                                "--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.geteuid() == 0 else [])],
                               root, env, log_path)
    try:
        yield base, log_path
    finally:
        _stop_server(proc, base)


def _start_server(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start JupyterLab on a free port; try another port if one was taken meanwhile (up to 3 tries)."""
    for _attempt in range(3):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with log_path.open("w") as log:
            proc = subprocess.Popen([*cmd, f"--port={port}"], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        try:
            while proc.poll() is None:
                # Ours, not another server that grabbed the port: it says so in its own log.
                if f"127.0.0.1:{port}/" in log_path.read_text(errors="replace"):
                    try:
                        _get(f"{base}/api/status", timeout=2)
                        if proc.poll() is None:
                            return proc, base
                    except (OSError, urllib.error.URLError):
                        pass
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s")
                time.sleep(0.3)
        except BaseException:
            _stop_server(proc, base)
            raise
        if "already in use" not in log_path.read_text(errors="replace"):
            break
    pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")


# With --LabApp.expose_app_in_browser, window.jupyterapp is JupyterLab's application: its shell knows the
# notebook panel and its kernel, its command registry runs "Run All Cells" exactly as the Run menu does.
_KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!k && k.status === 'idle' && k.connectionStatus === 'connected';
}"""


def _wait_kernel_idle(page, timeout_s: float) -> None:
    page.wait_for_function(_KERNEL_IDLE, timeout=timeout_s * 1000)


def _dismiss_dialogs(page) -> None:
    """Accept a kernel-picker (or any) dialog, should one appear despite the kernelspec metadata."""
    if page.locator(".jp-Dialog").count():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()


def test_vm_builder_in_chromium(jupyter_server) -> None:
    from playwright.sync_api import sync_playwright

    base, server_log = jupyter_server
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 4000})   # the whole builder in view
            page.set_default_timeout(CLICK_S * 1000)
            try:
                _drive(page, base)
            except BaseException:
                FAILURE_SHOT.parent.mkdir(parents=True, exist_ok=True)
                try:
                    page.screenshot(path=str(FAILURE_SHOT))
                except Exception:  # noqa: BLE001 - the screenshot is a debugging aid only
                    pass
                print(f"browser test failed; screenshot in {FAILURE_SHOT}; server log:\n{server_log.read_text()[-4000:]}")
                raise
        finally:
            browser.close()
    print(f"browser test: {time.monotonic() - t0:.1f} s in Chromium")


def _drive(page, base: str) -> None:
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded", timeout=PAGE_LOAD_S * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
    _dismiss_dialogs(page)
    _wait_kernel_idle(page, PAGE_LOAD_S)

    # Run > Run All Cells: the menu item's own command (a menu click can land while the menu bar re-renders).
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    _dismiss_dialogs(page)

    builder = page.locator(".pkvmlab-vm-builder")
    builder.wait_for(state="visible", timeout=RUN_ALL_S * 1000)
    _wait_kernel_idle(page, RUN_ALL_S)
    # The diagram, or the reason it could not be drawn (then fail at once, with that reason).
    builder.locator(".pkvmlab-shadow-svg svg, .pkvmlab-unavailable").first.wait_for(state="attached",
                                                                                   timeout=RUN_ALL_S * 1000)
    svg = builder.locator(".pkvmlab-shadow-svg svg")
    assert svg.count() == 1, builder.locator(".pkvmlab-unavailable").first.text_content()
    before = (svg.text_content() or "").count("0x1000")

    builder.locator("button", has_text="Create").first.click()
    # The status line changes last, after every view was redrawn: wait for it, then look at the diagram.
    builder.locator(".pkvmlab-status-ok", has_text="created VM 0x1000").wait_for(timeout=CLICK_S * 1000)
    page.wait_for_function(
        """([before]) => {
             const svg = document.querySelector('.pkvmlab-vm-builder .pkvmlab-shadow-svg svg');
             return svg !== null && svg.textContent.split('0x1000').length - 1 > before;
           }""", arg=[before], timeout=CLICK_S * 1000)
    assert "__pkvm_init_shadow" in (builder.locator(".pkvmlab-log").text_content() or "")
    options = builder.locator(".widget-select select").first.text_content() or ""
    assert "0x1000" in options, options

    # A guest that runs: choose hello, Create, Run; the console, the exit log and hyp's view of the vCPU follow.
    builder.locator(".widget-dropdown select").first.select_option("hello")
    builder.locator("button", has_text="Create").first.click()
    builder.locator(".pkvmlab-status-ok", has_text="running the guest 'hello'").wait_for(timeout=CLICK_S * 1000)
    builder.locator("button", has_text="Run").first.click()
    builder.locator(".pkvmlab-status-ok", has_text="ran:").wait_for(timeout=CLICK_S * 1000)
    assert "Hello from a protected guest!" in (builder.locator(".pkvmlab-console").text_content() or "")
    log = builder.locator(".pkvmlab-exit-log").text_content() or ""
    assert "system off" in log and "page fault" in log and "mmio" in log, log[:300]
    assert "hyp's view" in (builder.locator(".pkvmlab-shadow-svg svg").text_content() or "")
    overflow = page.evaluate(_BUILDER_OVERFLOW)
    assert not overflow, overflow

    page.wait_for_function("() => [...document.querySelectorAll('.pkvmlab-vm-builder img')].every(i => i.complete)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    builder.screenshot(path=str(SCREENSHOT))
    # The picture for the README and notebook 7: the builder from its controls down to the shadow table.
    from PIL import Image

    top, cut = builder.bounding_box(), builder.locator(".pkvmlab-shadow-diagram").bounding_box()
    with Image.open(SCREENSHOT) as im:
        bottom = min(im.height, int(cut["y"] + cut["height"] - top["y"]) + 8)
        im.crop((0, 0, im.width, bottom)).save(SCREENSHOT, optimize=True)


# Parts of the VM builder wider than the builder itself, or the builder wider than its output column.
_BUILDER_OVERFLOW = """() => {
    const b = document.querySelector('.pkvmlab-vm-builder');
    if (!b) return ['no builder'];
    const out = b.closest('.jp-OutputArea-output'), col = out ? out.getBoundingClientRect().width : 1e9;
    const bad = [], box = b.getBoundingClientRect();
    if (box.width > col + 1) bad.push(`the builder is ${Math.round(box.width)} px wide in a ${Math.round(col)} px column`);
    const parts = '.widget-hbox, .widget-button, .pkvmlab-console, .pkvmlab-exit-log, .widget-select';
    for (const el of b.querySelectorAll(parts)) {
        const past = el.getBoundingClientRect().right - box.right;
        if (past > 1) bad.push(`${el.className.split(' ')[0]} ends ${Math.round(past)} px past the builder`);
    }
    for (const el of b.querySelectorAll('.pkvmlab-exit-log, .pkvmlab-console'))
        if (el.scrollWidth > el.clientWidth + 1)
            bad.push(`${el.className} scrolls sideways (${el.scrollWidth} > ${el.clientWidth})`);
    return bad;
}"""


# -- every picture shows and fits, as a learner sees it ---------------------------------------------

WIDGET_CLASSES = (".pkvmlab-vm-builder", ".pkvmlab-translation-explorer", ".pkvmlab-hypercall-stepper", ".pkvmlab-timeline")
_MEASURE = """([minText, bareRepr, WIDGETS]) => {
    const nb = window.jupyterapp.shell.currentWidget.content.node;
    const bad = [], seen = [];
    const re = new RegExp(bareRepr);
    nb.querySelectorAll('.jp-OutputArea-output').forEach((out, i) => {
        const t = (out.innerText || '').trim();
        if (out.querySelector('.jp-RenderedText') && re.test(t)) bad.push(`output ${i} is a bare repr: ${t.slice(0, 80)}`);
    });
    const column = (el) => {
        const box = el.closest('.jp-OutputArea-output');
        return box ? box.getBoundingClientRect().width : nb.getBoundingClientRect().width;
    };
    // SVG shown as an <img> (JupyterLab's image/svg+xml renderer): smallest font-size x the scale it is drawn at.
    nb.querySelectorAll('.jp-RenderedSVG img, .jp-RenderedImage img').forEach((img) => {
        const w = img.getBoundingClientRect().width, avail = column(img);
        const item = {kind: img.closest('.jp-RenderedSVG') ? 'svg-img' : 'png', width: w, column: avail,
                      natural: img.naturalWidth};
        if (item.kind === 'svg-img' && img.src.startsWith('data:')) {
            const text = decodeURIComponent(img.src.split(',', 2)[1]);
            const sizes = [...text.matchAll(/font-size="([0-9.]+)"/g)].map(m => parseFloat(m[1]));
            const vb = text.match(/viewBox="[-0-9.]+ [-0-9.]+ ([0-9.]+)/);
            const units = vb ? parseFloat(vb[1]) : img.naturalWidth * 0.75;
            item.minText = sizes.length ? Math.min(...sizes) * w / units : null;
        }
        seen.push(item);
    });
    // Inline SVG (the dashboards, and any inline-rendered diagram): real text bounding boxes.
    nb.querySelectorAll('.jp-OutputArea-output svg').forEach((svg) => {
        if (svg.closest('.jp-RenderedSVG img')) return;
        const texts = [...svg.querySelectorAll('text')].map(t => t.getBoundingClientRect().height).filter(h => h > 0);
        if (!texts.length) return;
        seen.push({kind: 'inline-svg', width: svg.getBoundingClientRect().width, column: column(svg),
                   minText: Math.min(...texts)});
    });
    // Drawn HTML (a coloured code diff): its box fits the column, its text is readable.
    nb.querySelectorAll('.jp-OutputArea-output .pkvmlab-diff').forEach((el) => {
        seen.push({kind: 'html-diff', width: el.getBoundingClientRect().width, column: column(el),
                   minText: parseFloat(getComputedStyle(el).fontSize)});
    });
    // The dashboards (VM builder, translation explorer, hypercall stepper, timeline): each box fits its column.
    nb.querySelectorAll(WIDGETS).forEach((el) => {
        if (el.parentElement.closest(WIDGETS)) return;   // a timeline inside the builder is measured with it
        seen.push({kind: 'widget ' + [...el.classList].find(c => c.startsWith('pkvmlab-')),
                   width: Math.max(el.getBoundingClientRect().width, el.scrollWidth), column: column(el)});
    });
    for (const d of seen) {
        if (d.width > d.column + 1)
            bad.push(`${d.kind} is ${Math.round(d.width)} px wide in a ${Math.round(d.column)} px column`);
        if (d.minText != null && d.minText < minText) bad.push(`${d.kind}: text ${d.minText.toFixed(1)} px high (< ${minText})`);
    }
    return {bad, seen, notebook: nb.getBoundingClientRect().width};
}"""

_ALL_RUN = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    if (!k || k.status !== 'idle') return false;
    const cells = [...w.content.model.cells];
    return cells.filter(c => c.type === 'code' && c.sharedModel.getSource().trim())
                .every(c => c.executionCount !== null);
}"""


def test_every_picture_shows_and_fits_in_chromium(jupyter_server) -> None:
    from playwright.sync_api import sync_playwright

    base, server_log = jupyter_server
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems, report = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport=LEARNER_VIEWPORT)
            page.set_default_timeout(CLICK_S * 1000)
            for name in FIT_NOTEBOOKS:
                try:
                    result = _run_and_measure(page, base, name)
                except BaseException:
                    page.screenshot(path=str(SHOTS / f"failure_{name}.png"))
                    print(f"{name}: failed; server log:\n{server_log.read_text()[-3000:]}")
                    raise
                problems += [f"{name}: {b}" for b in result["bad"]]
                report.append(f"{name}: notebook {result['notebook']:.0f} px; " + "; ".join(
                    f"{d['kind']} {d['width']:.0f}/{d['column']:.0f} px"
                    + (f", text >= {d['minText']:.1f} px" if d.get("minText") is not None else "")
                    for d in result["seen"]))
        finally:
            browser.close()
    print("\n".join(report))
    assert not problems, "\n".join(problems)


def _run_and_measure(page, base: str, name: str) -> dict:
    page.goto(f"{base}/lab/tree/{name}?reset", wait_until="domcontentloaded", timeout=PAGE_LOAD_S * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
    _dismiss_dialogs(page)
    _wait_kernel_idle(page, PAGE_LOAD_S)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    _dismiss_dialogs(page)
    page.wait_for_function(_ALL_RUN, timeout=RUN_ALL_S * 1000, polling=500)
    builder_overflow = []
    if name.startswith("07_"):
        builder = page.locator(".pkvmlab-vm-builder")
        builder.locator("button", has_text="Create").first.click()
        builder.locator(".pkvmlab-status-ok", has_text="created VM").wait_for(timeout=CLICK_S * 1000)
        builder.locator(".widget-dropdown select").first.select_option("spin")   # the panes with a guest's exits in them
        builder.locator("button", has_text="Create").first.click()
        builder.locator(".pkvmlab-status-ok", has_text="running the guest 'spin'").wait_for(timeout=CLICK_S * 1000)
        for _ in range(2):
            builder.locator("button", has_text="Step").first.click()
            builder.locator(".pkvmlab-status-ok", has_text="stepped").wait_for(timeout=CLICK_S * 1000)
            page.wait_for_timeout(200)
        builder.locator(".pkvmlab-status-ok", has_text="preempted").wait_for(timeout=CLICK_S * 1000)
        builder_overflow = page.evaluate(_BUILDER_OVERFLOW)
    page.wait_for_timeout(500)   # images decode, SVG lays out
    result = page.evaluate(_MEASURE, [MIN_TEXT_PX, BARE_REPR, ", ".join(WIDGET_CLASSES)])
    result["bad"] += builder_overflow
    stem = name.split("_")[0]
    pictures = page.locator(", ".join([".jp-RenderedSVG img", ".jp-RenderedImage img", *WIDGET_CLASSES,
                                       ".jp-OutputArea-output .pkvmlab-diff"]))
    for k in range(pictures.count()):   # what a learner sees at 1440 x 900 with each picture scrolled into view
        try:
            pictures.nth(k).scroll_into_view_if_needed(timeout=10_000)
            page.screenshot(path=str(SHOTS / f"{stem}_{k}.png"))
        except Exception:  # noqa: BLE001 - screenshots are for a human to look at, not the verdict
            pass
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    return result


# -- notebook 8: the stepper and the timeline in step, the stepper's wait; an answer unfolds ----------------

STEPPER_NOTEBOOK = "08_inside_one_hypercall.ipynb"
LINE_STEPS = 8


def test_stepper_and_timeline_in_step_and_answers_unfold_in_chromium(jupyter_server) -> None:
    """Notebook 8 after Run All: Trace in the stepper, and the Timeline below it lists the traced call at once
    (its status says the history moved); then ◀/▶ line steps, each timed from the click to the new "step k of
    N" on screen (printed: issue 23 targets <= 0.3 s; never a pass/fail on wall time); then the notebook's
    folded answers open on a click of their summary.  And notebook 7's picture of the dashboard shows, small, with
    its caption."""
    from playwright.sync_api import sync_playwright

    base, server_log = jupyter_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport=LEARNER_VIEWPORT)
            page.set_default_timeout(CLICK_S * 1000)
            try:
                times = _drive_stepper(page, base)
                _notebook_7s_picture_is_small(page, base)
            except BaseException:
                SHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SHOTS / "failure_stepper.png"))
                print(f"stepper: failed; server log:\n{server_log.read_text()[-3000:]}")
                raise
        finally:
            browser.close()
    times.sort()
    print(f"stepper in Chromium: {len(times)} line steps, median {times[len(times) // 2] * 1e3:.0f} ms, "
          f"slowest {times[-1] * 1e3:.0f} ms from the click to the new step on screen (target <= 300 ms)")


_WHERE = "() => (document.querySelector('.pkvmlab-stepper-where') || {}).textContent || ''"


def _drive_stepper(page, base: str) -> list[float]:
    page.goto(f"{base}/lab/tree/{STEPPER_NOTEBOOK}?reset", wait_until="domcontentloaded", timeout=PAGE_LOAD_S * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
    _dismiss_dialogs(page)
    _wait_kernel_idle(page, PAGE_LOAD_S)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    _dismiss_dialogs(page)
    page.wait_for_function(_ALL_RUN, timeout=RUN_ALL_S * 1000, polling=500)
    stepper, timeline = page.locator(".pkvmlab-hypercall-stepper"), page.locator(".pkvmlab-timeline")
    stepper.wait_for(state="visible")
    timeline.wait_for(state="visible")
    before = timeline.locator(".pkvmlab-timeline-steps").text_content() or ""
    assert "share_hyp" not in before.split("create_vm")[-1], before     # nothing shared after create_vm yet

    stepper.locator("button", has_text="Trace").first.click()
    stepper.locator(".pkvmlab-status-ok", has_text="source-line steps").wait_for()
    # The timeline follows the stepper's call at once: its list now ends with the traced share_hyp.
    timeline.locator(".pkvmlab-status-info", has_text="lab.history moved").wait_for()
    steps = timeline.locator(".pkvmlab-timeline-steps").text_content() or ""
    assert "share_hyp" in steps.split("create_vm")[-1], steps
    assert page.evaluate(_WHERE).startswith("step 1 of ")

    times = []
    for k in range(2, LINE_STEPS + 2):
        t0 = time.monotonic()
        stepper.locator("button", has_text="line ▶").first.click()
        page.wait_for_function(f"() => ({_WHERE})().startsWith('step {k} of ')", polling="raf")
        times.append(time.monotonic() - t0)
    t0 = time.monotonic()
    stepper.locator("button", has_text="next write").first.click()
    page.wait_for_function(f"() => !({_WHERE})().startsWith('step {LINE_STEPS + 1} of ')", polling="raf")
    times.append(time.monotonic() - t0)
    assert "host stage-2" in (stepper.locator(".widget-html", has_text="what this line wrote").first.text_content()
                              or "")

    # The answers of "Things to try" are folded away; a click on their summary opens them.
    details = page.locator(".jp-RenderedMarkdown details").first
    details.scroll_into_view_if_needed()
    answer = details.locator("ol, ul, p").first
    assert not details.evaluate("d => d.open") and not answer.is_visible()
    details.locator("summary").click()
    assert details.evaluate("d => d.open") and answer.is_visible()
    return times


def _notebook_7s_picture_is_small(page, base: str) -> None:
    """Notebook 7, not run: the picture of the dashboard (a notebook attachment in an HTML <img>) is drawn,
    at most 480 px wide, captioned as a picture."""
    page.goto(f"{base}/lab/tree/{NOTEBOOK}?reset", wait_until="domcontentloaded", timeout=PAGE_LOAD_S * 1000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=PAGE_LOAD_S * 1000)
    _dismiss_dialogs(page)
    figure = page.locator(".jp-RenderedMarkdown figure").first
    figure.scroll_into_view_if_needed()
    img = figure.locator("img")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.bounding_box()["width"] <= 481 and "A picture of the dashboard" in (figure.text_content() or "")
