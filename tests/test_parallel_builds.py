"""The build caches under build/ are shared by every process that uses them: `make test` runs the suite on two
pytest-xdist workers, and both may build the same firmware hash at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pkvmlab.firmware import FIRMWARE_DIR, build_firmware
from pkvmlab.firmware.build import source_hash

ROOT = Path(__file__).resolve().parent.parent


def test_a_rebuild_leaves_the_generated_header_alone_while_another_compiler_may_read_it(tmp_path: Path, monkeypatch):
    """gen/hcall_ids.h is read by every compiler of that hash: a second build of the same hash must not truncate and
    rewrite it (a compiler of the first build could read it empty), so an unchanged header keeps its file."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path))
    build_firmware(FIRMWARE_DIR)
    header = tmp_path / source_hash(FIRMWARE_DIR) / "gen" / "hcall_ids.h"
    before = header.stat()
    build_firmware(FIRMWARE_DIR, force=True)
    after = header.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "#define" in header.read_text()


def test_two_processes_building_the_same_hash_at_once_both_get_a_whole_elf(tmp_path: Path):
    """Two builds of one hash into one empty cache, started together: both succeed and the ELF is complete
    (each links into its own temporary directory and renames the result into place)."""
    env = dict(os.environ, PKVMLAB_CACHE=str(tmp_path))
    code = "from pkvmlab.firmware import build_firmware; print(build_firmware())"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    # the path is the last line: a slow build also prints its "first use here: compiling ..." progress line first
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    elf = Path(paths.pop())
    assert elf.read_bytes()[:4] == b"\x7fELF"
    assert not [p for p in elf.parent.iterdir() if p.name.startswith("tmp")]   # no half-built leftovers
