"""The emulated core: memory, registers by name, exception entry, the run loop."""

from pkvmlab.machine.core import RAM_BASE, RAM_SIZE, Core, HostVector, PhysMemory
from pkvmlab.machine.interface import Machine

__all__ = ["RAM_BASE", "RAM_SIZE", "Core", "HostVector", "Machine", "PhysMemory"]
