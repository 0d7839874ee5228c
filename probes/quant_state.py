"""The tensors of a bitsandbytes 4-bit ``QuantState``: the one list that the fake tracer
(which re-creates them as fake tensors), the byte tracker (which counts them as
``weights/quant_state``) and validate's storage invariant (which weighs them against the
planner) all read.
"""
from __future__ import annotations

from typing import Callable

# name -> (attribute path from the QuantState). The packed 4-bit weight itself is the
# Params4bit's data, not part of its state.
PARTS: dict[str, tuple[str, ...]] = {
    # fp32 absmax per 64-weight block; with double quantization, its uint8 codes per block
    "absmax": ("absmax",),
    # the 16-entry fp32 code table of the 4-bit data type (NF4 or FP4)
    "code": ("code",),
    # double quantization: the fp32 mean subtracted from the absmax values before quantizing them
    "offset": ("offset",),
    # double quantization, the nested state: fp32 absmax per 256 absmax values ...
    "absmax2": ("state2", "absmax"),
    # ... and its own 256-entry fp32 8-bit code table
    "code2": ("state2", "code"),
}


def _owner(quant_state, path: tuple[str, ...]):
    """The object holding the last attribute of ``path`` (the state or its nested state2)."""
    for name in path[:-1]:
        quant_state = getattr(quant_state, name, None)
    return quant_state


def parts(quant_state) -> dict[str, object]:
    """The tensors the state holds, by name in :data:`PARTS` order (absent ones left out:
    a state without double quantization has no offset and no state2)."""
    import torch

    out = {}
    for name, path in PARTS.items():
        value = getattr(_owner(quant_state, path), path[-1], None)
        if isinstance(value, torch.Tensor):
            out[name] = value
    return out


def replace_parts(quant_state, new: Callable) -> None:
    """Set every tensor of the state (nested state included) to ``new(tensor)``, in place."""
    import torch

    for path in PARTS.values():
        owner = _owner(quant_state, path)
        value = getattr(owner, path[-1], None)
        if isinstance(value, torch.Tensor):
            setattr(owner, path[-1], new(value))
