"""The result of one invariant check, and of one invariant with its negative control."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InvariantResult:
    """One check on one input.

    ``measured`` is a number (an error, a count of mismatches, a ratio); ``bound`` says in
    words what it must satisfy ("== 0", "<= 3e-07", "in [0.0915, 0.0925]"); ``passed``
    whether it does; ``detail`` what was compared, in one line.
    """

    name: str
    measured: float
    bound: str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        if isinstance(self.measured, float) and not math.isfinite(self.measured):
            out["measured"] = repr(self.measured)  # JSON has no NaN / inf
        return out


def exact(name: str, mismatches: int | float, detail: str = "", what: str = "mismatches") -> InvariantResult:
    """Passes when nothing differs (a count of mismatches, or an error that must be 0)."""
    return InvariantResult(name, mismatches, f"{what} == 0", mismatches == 0, detail)


def at_most(name: str, measured: float, bound: float, detail: str = "") -> InvariantResult:
    ok = math.isfinite(measured) and measured <= bound
    return InvariantResult(name, measured, f"<= {bound:.3g}", ok, detail)


def greater(name: str, measured: float, bound: float, detail: str = "") -> InvariantResult:
    ok = math.isfinite(measured) and measured > bound
    return InvariantResult(name, measured, f"> {bound:.3g}", ok, detail)


def within(name: str, measured: float, low: float, high: float, detail: str = "") -> InvariantResult:
    ok = math.isfinite(measured) and low <= measured <= high
    return InvariantResult(name, measured, f"in [{low:.4g}, {high:.4g}]", ok, detail)


@dataclass(frozen=True)
class Outcome:
    """An invariant's result on the real input and on its deliberately broken input."""

    group: str
    result: InvariantResult
    control: InvariantResult
    broken: str  # what the broken input is, in words
    seconds: float = 0.0

    @property
    def control_rejected(self) -> bool:
        return not self.control.passed

    @property
    def ok(self) -> bool:
        """The invariant holds and the check proved it can fail."""
        return self.result.passed and self.control_rejected

    def to_dict(self) -> dict:
        out = self.result.to_dict()
        control = self.control.to_dict()
        out["group"] = self.group
        out["control"] = {"broken": self.broken, "measured": control["measured"],
                          "rejected": self.control_rejected, "detail": control["detail"]}
        return out
