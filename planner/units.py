"""Units and the phase names every part of the project shares. Pure Python.

Sizes are bytes; GiB and MiB are binary (2^30 and 2^20 bytes), as nvidia-smi reports them.
A training step has three measured phases (see docs/design.md, "Phases"): ``forward`` (up
to the loss), ``backward`` and ``optimizer`` (the step and ``zero_grad``).
"""
from __future__ import annotations

GIB = 1 << 30
MIB = 1 << 20
PHASES = ("forward", "backward", "optimizer")
FP32 = 4  # bytes of an fp32 element


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for non-negative integers."""
    return -(-a // b)
