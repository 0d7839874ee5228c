"""The invariant registry: every invariant has a check, a real input and a broken input.

An invariant is registered with :func:`register` by its group module (lora, dora, quant,
planner). Running it applies the *same* check function to the real input, which must
pass, and to a deliberately broken input (a non-zero B, a wrong norm axis, a shifted
codebook, ...), which the check must reject: that is what proves the check can fail.

Group modules are imported only when their group is selected, so ``--only quant`` does
not pay for importing peft.
"""
from __future__ import annotations

import dataclasses
import importlib
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..result import InvariantResult, Outcome

GROUPS = ("lora", "dora", "quant", "planner")


@dataclass(frozen=True)
class Invariant:
    name: str
    group: str
    check: Callable[[Any], InvariantResult]
    good: Callable[[], Any]  # builds the real input
    broken: Callable[[], Any]  # builds the deliberately broken input
    broken_desc: str

    def run_check(self, control: bool) -> InvariantResult:
        case = (self.broken if control else self.good)()
        return dataclasses.replace(self.check(case), name=self.name)

    def run(self) -> Outcome:
        start = time.perf_counter()
        result = self.run_check(control=False)
        control = self.run_check(control=True)
        return Outcome(self.group, result, control, self.broken_desc, time.perf_counter() - start)


_REGISTRY: dict[str, Invariant] = {}


def register(name: str, group: str, check: Callable[[Any], InvariantResult], good: Callable[[], Any],
             broken: Callable[[], Any], broken_desc: str) -> Invariant:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}")
    if name in _REGISTRY:
        raise ValueError(f"invariant {name!r} registered twice")
    inv = Invariant(name, group, check, good, broken, broken_desc)
    _REGISTRY[name] = inv
    return inv


class UnknownGroup(ValueError):
    pass


def select(groups: Iterable[str] = ()) -> list[Invariant]:
    """The invariants of the given groups (all groups when empty), in registration order."""
    groups = tuple(groups) or GROUPS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UnknownGroup(f"unknown group {', '.join(map(repr, unknown))}; valid groups: {', '.join(GROUPS)}")
    for group in groups:
        importlib.import_module(f"{__name__}.{group}")
    return [inv for inv in _REGISTRY.values() if inv.group in groups]


@dataclass(frozen=True)
class Errored:
    """An invariant whose check raised: an unexpected error, not a failed invariant."""

    group: str
    name: str
    error: str
    trace: str
    seconds: float = 0.0

    ok = False


def run(invariants: Iterable[Invariant], progress: Callable[[str], None] | None = None) -> list[Outcome | Errored]:
    """Run each invariant and its control; an exception is recorded as :class:`Errored`."""
    outcomes: list[Outcome | Errored] = []
    for inv in invariants:
        start = time.perf_counter()
        try:
            outcome = inv.run()
        except Exception as exc:  # reported, and the run goes on
            outcome = Errored(inv.group, inv.name, f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                              time.perf_counter() - start)
        outcomes.append(outcome)
        if progress:
            status = "error" if isinstance(outcome, Errored) else ("ok" if outcome.ok else "FAIL")
            progress(f"{inv.name}: {status} ({outcome.seconds:.1f} s)")
    return outcomes
