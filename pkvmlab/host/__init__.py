"""The host kernel model: hypercalls and memory accesses issued at EL1 on the core."""

from pkvmlab.arch.smccc import HYPERCALLS
from pkvmlab.host.host import Host

__all__ = ["HYPERCALLS", "Host"]
