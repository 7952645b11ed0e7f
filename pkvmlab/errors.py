"""pkvmlab's exceptions: one small hierarchy, each naming what went wrong in words."""

from __future__ import annotations

import errno as _errno
import os


def errno_words(err: int) -> str:
    """``-12`` or ``12`` -> ``"ENOMEM (Cannot allocate memory)"``."""
    err = abs(err)
    name = _errno.errorcode.get(err, f"errno {err}")
    return f"{name} ({os.strerror(err)})"


class PkvmLabError(Exception):
    """Base of every error pkvmlab raises on purpose."""


class UsageError(PkvmLabError, ValueError):
    """The Python API was used wrongly (bad name, wrong type, outside RAM...)."""


class FirmwareBuildError(PkvmLabError):
    """The EL2 firmware did not compile or link; carries the compiler's message."""

    def __init__(self, message: str, compiler_output: str = ""):
        super().__init__(message + ("\n" + compiler_output if compiler_output else ""))
        self.compiler_output = compiler_output


class MachineError(PkvmLabError):
    """The emulated core stopped somewhere pkvmlab did not expect (or ran too long)."""


class HypercallError(PkvmLabError):
    """A hypercall returned a negative errno; names the call, its arguments, the errno and, when the host can
    tell, which check refused (``reason``, worked out by ``pkvmlab.host.reasons``: hyp returns only the errno)."""

    def __init__(self, call: str, args: tuple, err: int, reason: str = ""):
        self.call = call
        self.args_ = tuple(args)
        self.errno = abs(err)
        self.reason = reason
        shown = ", ".join(hex(a) if isinstance(a, int) else repr(a) for a in args)
        super().__init__(f"{call}({shown}) failed: -{errno_words(err)}" + (f": {reason}" if reason else ""))


class HostException(PkvmLabError):
    """The host kernel took an exception at its own EL1 vector (an UNDEFINED instruction, SVC, BRK, an abort)."""

    def __init__(self, message: str, *, esr: int, far: int, elr: int, access: str, address: int, vector: str = ""):
        super().__init__(message)
        self.esr, self.far, self.elr = esr, far, elr
        self.access, self.address, self.vector = access, address, vector


class HostAccessFault(HostException):
    """The host touched memory stage-2 does not let it touch; hyp injected an abort."""


class HypPanic(PkvmLabError):
    """The hypervisor itself faulted or called hyp_panic(); the machine is dead."""

    def __init__(self, message: str, *, esr: int | None = None, elr: int = 0, far: int | None = None,
                 instruction: str = "", reason: str = ""):
        super().__init__(message)
        self.esr, self.elr, self.far = esr, elr, far
        self.instruction, self.reason = instruction, reason


class SpecMismatch(PkvmLabError):
    """A hypercall did something its executable specification does not allow (``lab.spec_check``).

    ``call``/``args``: the hypercall; ``allowed``: what the specification allowed, in words;
    ``happened``: what the hypervisor did; ``differences``: the pages and slots that differ.
    """

    def __init__(self, call: str, args: tuple, allowed: list[str], happened: str, differences: list[str]):
        self.call, self.args_, self.allowed, self.happened = call, tuple(args), allowed, happened
        self.differences = differences
        shown = ", ".join(hex(a) if isinstance(a, int) else repr(a) for a in args)
        lines = [f"{call}({shown}) did what the specification does not allow.",
                 "  the specification allowed: " + (" or ".join(allowed[:3]) + (f" (or {len(allowed) - 3} more alike)"
                                                                                 if len(allowed) > 3 else "")),
                 f"  the hypervisor: {happened}"]
        if differences:
            lines.append("  where it differs (hypervisor vs specification):")
            lines += ["    " + d for d in differences[:20]] + ([f"    ... {len(differences) - 20} more"]
                                                               if len(differences) > 20 else [])
        super().__init__("\n".join(lines))
