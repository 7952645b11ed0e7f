"""QEMU's exception numbers, as Unicorn passes them to ``UC_HOOK_INTR``, and hyp_panic()'s BRK immediate.

Kept apart from ``core.py`` so the modules that decode them (``panic.py``) need not import the core.
"""

EXCP_UDEF = 1
EXCP_SWI = 2
EXCP_PREFETCH_ABORT = 3
EXCP_DATA_ABORT = 4
EXCP_BKPT = 7
EXCP_HVC = 11
EXCP_HYP_TRAP = 12     # e.g. an SMC trapped by HCR_EL2.TSC
EXCP_SMC = 13
EXCP_NAMES = {EXCP_UDEF: "undefined instruction", EXCP_SWI: "SVC", EXCP_PREFETCH_ABORT: "instruction abort",
              EXCP_DATA_ABORT: "data abort", EXCP_BKPT: "BRK", EXCP_HVC: "HVC", EXCP_HYP_TRAP: "trap to EL2",
              EXCP_SMC: "SMC"}

HYP_PANIC_BRK = 0x800   # firmware/entry.S: hyp_panic() executes BRK #0x800 with the message in x0
