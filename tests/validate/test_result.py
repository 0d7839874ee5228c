"""InvariantResult and Outcome: frozen records with a stable dict form."""
import dataclasses
import json
import math

import pytest

from validate.result import InvariantResult, Outcome, at_most, exact, greater, within


def test_frozen():
    r = exact("x", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.passed = False


def test_helpers_pass_and_fail():
    assert exact("x", 0).passed and not exact("x", 1).passed
    assert at_most("x", 1e-7, 2e-7).passed and not at_most("x", 3e-7, 2e-7).passed
    assert not at_most("x", math.nan, 1.0).passed  # NaN never passes
    assert greater("x", 0.1, 0).passed and not greater("x", 0.0, 0).passed
    assert within("x", 0.092, 0.09, 0.1).passed and not within("x", 0.12, 0.09, 0.1).passed


def test_dict_form_is_json_even_for_nan():
    out = InvariantResult("x", math.nan, "== 0", False, "d").to_dict()
    json.dumps(out, allow_nan=False)
    o = Outcome("lora", exact("x", 0), exact("x", 3), "broken")
    assert o.ok and o.control_rejected
    d = o.to_dict()
    assert d["control"] == {"broken": "broken", "measured": 3, "rejected": True, "detail": ""}
