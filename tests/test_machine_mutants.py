"""The QEMU differential catches bugs planted in the lab's own exception entry and abort decoding.

Each machine mutant (``pkvmlab/mutants/machine/NN_name.patch``: a wrong FAR, ELR, ESR field, SPSR or target
EL in ``machine/*.py`` or ``native_hook.c``/``native_abort.c``) is applied to a copy of the pkvmlab package, and the differential
(``tests/differential.py`` host actions, ``tests/guest_differential.py`` guest programs, every program of
``firmware/guests``) runs in a Python that imports that copy, at CI's budget, until its first difference
(``tests/machine_mutant_run.py``).  Nothing but the differential decides: no test here knows what a bug
looks like.  The unmutated copy, run the same way, reports no difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_qemu_differential import require_qemu

from pkvmlab.errors import UsageError
from pkvmlab.firmware.build import cache_dir
from pkvmlab.mutants import machine as machine_mutants

TESTS = Path(__file__).parent
CONTROL_ACTIONS = 2000 + 12 * 30   # the first seed's host actions and the generated guest programs


def run_differential(copy: Path, hook: str, max_actions: int | None = None) -> dict:
    """tests/machine_mutant_run.py in a Python that imports the package copy at ``copy``: its JSON answer."""
    # unchecked: the specification checker (PKVMLAB_SPEC_CHECK) would see some of these bugs too; the differential alone must
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy), str(TESTS)]), PKVMLAB_CACHE=str(cache_dir()),
               PKVMLAB_SPEC_CHECK="0")
    cmd = [sys.executable, str(TESTS / "machine_mutant_run.py"), hook] + ([str(max_actions)] if max_actions else [])
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["pkvmlab"] == str(copy / "pkvmlab" / "__init__.py"), out["pkvmlab"]   # the copy, not the original
    return out


def test_every_machine_mutant_says_its_bug_and_the_rule_it_breaks():
    names = machine_mutants.names()
    assert len(names) >= 10
    for name in names:
        assert machine_mutants.describe(name)
        assert any("ARM ARM" in line for line in machine_mutants.header(name)), name
        assert machine_mutants.hook(name) in ("native", "python")


@pytest.mark.slow
@pytest.mark.parametrize("name", machine_mutants.names())
def test_the_differential_alone_catches_the_machine_mutant(name, tmp_path):
    require_qemu()
    copy = machine_mutants.build(name, tmp_path)
    out = run_differential(copy, machine_mutants.hook(name))
    assert out["caught"], f"{name} ({machine_mutants.describe(name)}) survived {out['actions']} differential actions"


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["native", "python"])
def test_the_unmutated_copy_shows_no_difference(hook, tmp_path):
    """The copy mechanism itself adds nothing: the same runner on the untouched package agrees with QEMU."""
    require_qemu()
    out = run_differential(machine_mutants.build(None, tmp_path), hook, CONTROL_ACTIONS)
    assert not out["caught"], out


def test_a_machine_mutant_that_no_longer_applies_says_so(tmp_path):
    src = tmp_path / "bad.patch"
    src.write_text("# nothing\n--- a/machine/core.py\n+++ b/machine/core.py\n@@ -1 +1 @@\n-no such line\n+x\n")
    from pkvmlab.mutants import apply_patch

    (tmp_path / "pkvmlab" / "machine").mkdir(parents=True)
    (tmp_path / "pkvmlab" / "machine" / "core.py").write_text("something else\n")
    with pytest.raises(UsageError, match="does not apply to machine/core.py"):
        apply_patch(src.read_text(), tmp_path / "pkvmlab")
