"""Every registered invariant holds on its real input, and its check rejects the broken input.

The invariant list is read from the registry at collection time (importing the group
modules only, which do not build any model until a check runs).
"""
import pytest

from validate.invariants import GROUPS, select

NAMES = [inv.name for inv in select()]

# The planner's double-quant quant-state formula omits bitsandbytes' per-weight 256-entry fp32
# code table of the second level (state2.code, 1024 B per 4-bit weight). Strict: when the
# formula is fixed in planner/memory/terms.py this XPASSes and the mark must go.
KNOWN_PLANNER_GAPS: dict[str, str] = {}


def _holds_params():
    for name in NAMES:
        marks = [pytest.mark.xfail(reason=KNOWN_PLANNER_GAPS[name], strict=True)] if name in KNOWN_PLANNER_GAPS else []
        yield pytest.param(name, marks=marks, id=name)


def test_registry_covers_every_group():
    groups = {inv.group for inv in select()}
    assert groups == set(GROUPS)
    assert len(NAMES) == len(set(NAMES))
    assert len(NAMES) >= 25


@pytest.mark.parametrize("name", list(_holds_params()))
def test_invariant_holds(outcomes, name):
    result = outcomes(name).result
    assert result.name == name
    assert result.passed, f"{name}: measured {result.measured}, bound {result.bound}: {result.detail}"


@pytest.mark.parametrize("name", NAMES)
def test_negative_control_rejected(outcomes, name):
    outcome = outcomes(name)
    assert not outcome.control.passed, (f"{name}: the check accepted the broken input ({outcome.broken}): "
                                         f"measured {outcome.control.measured}, {outcome.control.detail}")
    assert outcome.control.measured != outcome.result.measured


def test_known_gap_is_the_code_table(outcomes):
    """The double-quant storage gap is exactly 1024 bytes per 4-bit weight (state2.code)."""
    from validate import models as M

    result = outcomes("quant.storage_equals_planner[dq]").result
    n_weights = len(M.linear4bit_layers(M.four_bit(double_quant=True)))
    assert result.measured in (0, 256 * 4 * n_weights)
