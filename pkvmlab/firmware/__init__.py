"""Build the EL2 firmware with zig cc (cached by content hash), load its ELF, read its DWARF."""

from pkvmlab.firmware.build import FIRMWARE_DIR, build_firmware, copy_firmware
from pkvmlab.firmware.elf import Field, Firmware, Layout, load_firmware

__all__ = ["FIRMWARE_DIR", "copy_firmware", "Field", "Firmware", "Layout", "build_firmware", "load_firmware"]
