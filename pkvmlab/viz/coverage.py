"""Coverage of the firmware's source, drawn the way gcov/lcov users know it: pure, snapshot -> HTML.

``coverage_view(cov, "mem_protect.c")`` is a learner's picture of one file (``_repr_html_``): each line of
the source with its hit count, executed lines green, missed red, a line whose branches went only one
way yellow, and each error return marked reached or not.  ``file_page`` and ``index_page`` are the
pages of the HTML report ``make coverage`` writes (``tools/coverage.py``).
"""

from __future__ import annotations

from html import escape

from pkvmlab.inspect.coverage import Coverage, FileCoverage, percent
from pkvmlab.inspect.error_paths import error_paths

GREEN, RED, YELLOW = "#d3f5d3", "#f8cfcf", "#fdf0b0"
STYLE = ("<style>.pkcov{border-collapse:collapse;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;width:100%}"
         ".pkcov td{padding:0 6px;vertical-align:top;border:0}.pkcov td.n{color:#777;text-align:right;width:3em}"
         ".pkcov td.h{text-align:right;width:4.5em}.pkcov td.b{width:4em;color:#555}.pkcov td.e{width:5.5em;white-space:nowrap}"
         ".pkcov td.s{white-space:pre;tab-size:4;-moz-tab-size:4;overflow:hidden;text-overflow:ellipsis;width:100%}"
         ".pkidx{border-collapse:collapse;font:13px sans-serif}.pkidx td,.pkidx th{padding:2px 10px;"
         "border-bottom:1px solid #ddd;text-align:right}.pkidx td:first-child,.pkidx th:first-child{text-align:left}"
         "</style>")


def _colour(f: FileCoverage, line: int) -> str:
    if line not in f.hits:
        return ""
    if not f.hits[line]:
        return RED
    if any(b.directions_run < 2 for b in f.branches.get(line, ())):
        return YELLOW
    return GREEN


def _branch_cell(f: FileCoverage, line: int) -> str:
    bs = f.branches.get(line, ())
    if not bs:
        return ""
    marks = "".join(("+" if b.taken else "-") + ("+" if b.not_taken else "-") for b in bs)
    return f"<span title='each branch: taken, not taken'>[{marks}]</span>"


def _bar(p: float) -> str:
    colour = "#3c9a3c" if p >= 90 else "#d9a400" if p >= 60 else "#c83030"
    return (f"<div style='display:inline-block;width:80px;height:9px;border:1px solid #999;vertical-align:middle'>"
            f"<div style='width:{p * 0.8:.0f}px;height:9px;background:{colour}'></div></div>")


def source_table(cov: Coverage, name: str, *, lines: tuple[int, int] | None = None) -> str:
    """The annotated source of one file as an HTML table (line, hits, branches, error path, source)."""
    f = cov.file(name)
    errs = {e.line: e for e in error_paths(cov) if e.file == f.name}
    first, last = lines if lines else (1, len(f.source))
    rows = []
    for n in range(first, min(last, len(f.source)) + 1):
        colour = _colour(f, n)
        hits = f.hits.get(n)
        e = errs.get(n)
        mark = ""
        if e is not None:
            mark = {True: "<b style='color:#176b17'>errno ✓</b>", False: "<b style='color:#a11'>errno ✗</b>",
                    None: "<span style='color:#777' title='cannot be told from the -O2 code'>errno ?</span>"}[e.reached]
            mark = f"<span title='{escape(e.how)}'>{mark}</span>"
        bg = f" style='background:{colour}'" if colour else ""
        rows.append(f"<tr{bg}><td class=n>{n}</td><td class=h>{'' if hits is None else hits}</td>"
                    f"<td class=b>{_branch_cell(f, n)}</td><td class=e>{mark}</td>"
                    f"<td class=s>{escape(f.source[n - 1])}</td></tr>")
    return f"<table class=pkcov>{''.join(rows)}</table>"


def _file_summary(f: FileCoverage) -> str:
    return (f"{f.lines_run}/{f.lines} lines ({percent(f.lines_run, f.lines):.1f}%), "
            f"{f.branch_directions_run}/{f.branch_directions} branch directions "
            f"({percent(f.branch_directions_run, f.branch_directions):.1f}%)")


def _legend() -> str:
    return (f"<span style='background:{GREEN};padding:0 6px'>ran</span> "
            f"<span style='background:{RED};padding:0 6px'>never ran</span> "
            f"<span style='background:{YELLOW};padding:0 6px'>a branch went one way only</span> "
            "· hits: times the line's busiest instruction ran · [+-]: each conditional branch, taken / not taken "
            "· errno ✓/✗/?: an error return reached / not / cannot be told from the optimised code")


def _error_lines(errs) -> str:
    """The file's error lines in one row: reached, not reached, cannot be told (line numbers)."""
    parts = []
    for reached, label, colour in ((True, "errno reached at lines", "#176b17"), (False, "not reached", "#a11"),
                                   (None, "cannot be told", "#777")):
        ns = [str(e.line) for e in errs if e.reached is reached]
        if ns:
            parts.append(f"<span style='color:{colour}'>{label} {', '.join(ns)}</span>")
    return f"<span style='font-size:12px'>{' · '.join(parts)}</span><br>" if parts else ""


class CoverageView:
    """One file's coverage, drawn in a notebook (``_repr_html_``) in a scrolling box about 1000 px wide."""

    def __init__(self, cov: Coverage, name: str, *, height: int = 520):
        self.cov, self.name, self.height = cov, name, height
        self.file = cov.file(name)

    def error_paths(self):
        return [e for e in error_paths(self.cov) if e.file == self.file.name]

    def _repr_html_(self) -> str:
        f = self.file
        errs = self.error_paths()
        reached = sum(1 for e in errs if e.reached)
        head = (f"<div style='font:13px sans-serif;margin:4px 0'><b>{escape(f.name)}</b>"
                f"{' — ' + escape(self.cov.label) if self.cov.label else ''}: {_file_summary(f)}; "
                f"error returns reached: {reached} of {len(errs)}"
                f"{f' ({sum(1 for e in errs if e.reached is None)} cannot be told)' if errs else ''}<br>"
                f"{_error_lines(errs)}"
                f"<span style='font-size:12px;color:#444'>{_legend()}</span></div>")
        return (f"{STYLE}<div style='max-width:1000px'>{head}<div style='max-height:{self.height}px;overflow-y:auto;"
                f"border:1px solid #ccc'>{source_table(self.cov, self.name)}</div></div>")

    def __repr__(self) -> str:
        return f"CoverageView({self.file.name}: {_file_summary(self.file)})"


def coverage_view(cov: Coverage, name: str = "mem_protect.c", *, height: int = 520) -> CoverageView:
    """The annotated source of ``name`` (a file under firmware/) for a notebook."""
    return CoverageView(cov, name, height=height)


def file_page(cov: Coverage, f: FileCoverage) -> str:
    """The report's page for one file: the gcov/lcov look (annotated source, green / red / yellow)."""
    return (f"<!doctype html><meta charset=utf-8><title>{escape(f.name)} coverage</title>{STYLE}"
            f"<p style='font:14px sans-serif'><a href='index.html'>index</a> · <b>{escape(f.name)}</b>: "
            f"{_file_summary(f)}<br><span style='font-size:12px'>{_legend()}</span></p>"
            f"{source_table(cov, f.name)}")


def page_name(f: FileCoverage) -> str:
    return f.name.replace("/", "_") + ".html"


def index_page(cov: Coverage, title: str) -> str:
    """The report's index: per file, lines and branch directions run, with bars."""
    rows = []
    for f in cov.files.values():
        lp, bp = percent(f.lines_run, f.lines), percent(f.branch_directions_run, f.branch_directions)
        branches = f"{_bar(bp)} {bp:.1f}%" if f.branch_directions else "no branch"
        rows.append(f"<tr><td><a href='{page_name(f)}'>{escape(f.name)}</a></td><td>{_bar(lp)} {lp:.1f}%</td>"
                    f"<td>{f.lines_run}/{f.lines}</td><td>{branches}</td>"
                    f"<td>{f.branch_directions_run}/{f.branch_directions}</td></tr>")
    lp, bp = percent(cov.lines_run, cov.lines), percent(cov.branch_directions_run, cov.branch_directions)
    rows.append(f"<tr><th>all firmware</th><th>{lp:.1f}%</th><th>{cov.lines_run}/{cov.lines}</th>"
                f"<th>{bp:.1f}%</th><th>{cov.branch_directions_run}/{cov.branch_directions}</th></tr>")
    return (f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>{STYLE}"
            f"<h2 style='font-family:sans-serif'>{escape(title)}</h2>"
            f"<p style='font:13px sans-serif'>{cov.runs} process data file(s) merged. "
            "Line: any of its instructions ran. Branch direction: one side of a conditional branch instruction "
            "(the -O2 code's, as gcov counts them).</p>"
            "<table class=pkidx><tr><th>file</th><th>lines</th><th></th><th>branches</th><th></th></tr>"
            f"{''.join(rows)}</table>")


def reasons_section(missed, error_returns) -> str:
    """HTML for the report's index: every line never run with its reason, every error return not shown reached."""
    def rows(items, cells):
        return "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells(i)) + "</tr>" for i in items)
    return ("<h3 style='font-family:sans-serif'>Lines never run, and why</h3><table class=pkidx>"
            "<tr><th>file</th><th>line</th><th>code</th><th>why</th></tr>"
            + rows(missed, lambda m: (m.file, m.line, m.text.strip()[:70], m.reason or "no reason known: a test should reach it"))
            + "</table><h3 style='font-family:sans-serif'>Error returns not shown reached</h3><table class=pkidx>"
            "<tr><th>file</th><th>line</th><th>code</th><th>verdict</th><th>why</th></tr>"
            + rows(error_returns, lambda e: (e.file, e.line, e.text.strip()[:60],
                                             {False: "not reached", None: "cannot be told"}[e.reached], e.how))
            + "</table>")
