"""Pure ARMv8-A and pKVM facts: encodings, bit fields and their meanings in words.

Imports nothing from the emulator, so facts can be checked (and drawn) on their own.
"""

from pkvmlab.arch import esr, insn, pgtable, pstate, smccc, sysregs  # noqa: F401
