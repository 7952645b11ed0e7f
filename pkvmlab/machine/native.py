"""Placeholder: the native fast path is not built yet."""


def attach(core, required=False):
    if required:
        from pkvmlab.errors import MachineError
        raise MachineError("native hook not available")
    return None
