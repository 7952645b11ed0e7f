"""Run the QEMU differential, as CI runs it, until its first difference; print what caught it as JSON.

Run by ``tests/test_machine_mutants.py`` in a Python whose ``sys.path`` starts with a copy of the pkvmlab
package carrying one planted machine-code bug (``pkvmlab.mutants.machine.build``), or none:

    PYTHONPATH=<copy>:tests python tests/machine_mutant_run.py native|python [max_actions]

CI's budget, in the order run here: ``native``, the host actions of the first seed
(``test_random_host_actions_agree_on_unicorn_and_qemu``), the generated guest programs
(``test_generated_guest_programs_agree_on_unicorn_and_qemu``), the other seeds' host actions, then every
guest program of ``firmware/guests`` (``test_qemu_guests.py``); ``python``, the pure-Python exception entry's
500 host actions (``test_the_pure_python_exception_entry_agrees_with_qemu_too``).  ``max_actions`` stops
earlier (an unmutated control need not run all of it).  Counted: one per host action, one per form of a
generated guest program, one per guest program.  The output: ``{"caught", "kind", "actions",
"difference", "pkvmlab"}``; ``kind`` is the action that showed the difference (a host form's name, "hvc",
"read"/"write", a VM operation, "guest program N", or the guest's name).  A run that found nothing also
says how often the native hook entered an HVC and a guest's stage-2 abort itself (``reached``).
"""

from __future__ import annotations

import json
import re
import sys

from differential import Side, run_sequence
from guest_differential import compare_program
from test_qemu_differential import ACTIONS_PER_SEED, GUEST_FORMS_PER_PROGRAM, GUEST_PROGRAMS, SEEDS
from test_qemu_guests import _OPEN, NEVER_STOPS, observe

import pkvmlab
from pkvmlab import Lab
from pkvmlab.firmware.guests import guest_names

PYTHON_HOOK_SEED, PYTHON_HOOK_ACTIONS = 7, 500


def host_actions(u: Side, q: Side, seed: int, n: int) -> tuple[str, int, str] | None:
    """(kind, actions run to the difference, the difference), or None when ``n`` actions agreed."""
    diffs, _ = run_sequence(u, q, seed, n, first_only=True)
    if not diffs:
        return None
    m = re.match(r"action (\d+) \(([^,)]+)", diffs[0])
    return m.group(2), int(m.group(1)) + 1, diffs[0]


def guest_program(name: str) -> str | None:
    """One program of firmware/guests on both CPUs (test_qemu_guests.py's comparison): the difference, or None."""
    max_runs = 3 if name in NEVER_STOPS else 200
    with Lab() as u:
        ou = observe(u, name, max_runs)
    with Lab(backend="qemu") as q:
        oq = observe(q, name, max_runs)
    diff = [k for k in ou if k != "preempted" and ou[k] != oq[k]]
    return f"{name}: {diff[0]} differs: {str(ou[diff[0]])[:300]} vs {str(oq[diff[0]])[:300]}" if diff else None


def main(hook: str, max_actions: int) -> dict:
    done = 0

    def caught(kind: str, actions: int, difference: str) -> dict:
        return {"caught": True, "kind": kind, "actions": done + actions, "difference": difference[:600]}

    try:
        u = Side("unicorn", native=hook != "python")
    except Exception as e:   # the lab does not even boot on Unicorn: QEMU's must, and that is the difference
        q = Side("qemu")
        q.close()
        return caught("boot", 1, f"Unicorn: {type(e).__name__}: {e}; QEMU booted")
    if hook == "python":
        q = Side("qemu")
        try:
            hit = host_actions(u, q, PYTHON_HOOK_SEED, min(PYTHON_HOOK_ACTIONS, max_actions))
        finally:
            q.close()
        return caught(*hit) if hit else {"caught": False, "actions": min(PYTHON_HOOK_ACTIONS, max_actions)}
    q = Side("qemu")
    try:
        for k, seed in enumerate(SEEDS):
            n = min(ACTIONS_PER_SEED, max_actions - done)
            hit = host_actions(u, q, seed, n) if n > 0 else None
            if hit:
                return caught(*hit)
            done += n
            if k == 0:   # then the generated guest programs, on the same two labs (as CI runs them)
                for prog in range(GUEST_PROGRAMS["seed"]):   # the machine code is the same for both eras: the seed's labs
                    if done >= max_actions:
                        break
                    d, _ = compare_program(u.lab, q.lab, prog, GUEST_FORMS_PER_PROGRAM)
                    if d:
                        return caught(f"guest program {prog}", GUEST_FORMS_PER_PROGRAM, d[0])
                    done += GUEST_FORMS_PER_PROGRAM
    finally:
        q.close()
    native = u.lab.core.native
    reached = {"native hvc": native.hvc_count, "native guest aborts": native.guest_aborts,
               "stage-2 aborts": u.lab.core.stats["stage2_abort"]} if native is not None else {}
    for name in guest_names():
        if done >= max_actions:
            break
        if name in _OPEN:   # known to differ on the correct code (listed there with why)
            continue
        d = guest_program(name)
        if d:
            return caught(name, 1, d)
        done += 1
    return {"caught": False, "actions": done, "reached": reached}


if __name__ == "__main__":
    hook = sys.argv[1]
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 62
    out = main(hook, limit)
    out["pkvmlab"] = pkvmlab.__file__
    print(json.dumps(out))
