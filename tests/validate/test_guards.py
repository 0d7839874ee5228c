"""The DoRA zero-norm-row guard: peft gives NaN there, the guard gives a clear error."""
import pytest
import torch

from validate import guards
from validate import models as M
from validate.invariants import dora


def test_peft_gives_nan_on_a_zero_norm_row_and_the_guard_names_it():
    model = dora.zero_row_model()
    assert torch.isnan(M.logits(model)).any()  # the upstream behaviour the guard exists for
    found = guards.dora_zero_norm_rows(model)
    assert len(found) == 1
    name, rows = found[0]
    assert name.endswith("layers.0.self_attn.q_proj") and rows == [5]
    with pytest.raises(guards.ZeroNormRowError, match=r"q_proj rows \[5\]"):
        guards.check_dora_rows(model)


def test_guard_is_silent_on_healthy_models():
    guards.check_dora_rows(M.adapted("dora")[2])
    assert guards.dora_zero_norm_rows(M.adapted("lora")[2]) == []  # no DoRA layers, nothing to check
    assert guards.dora_zero_norm_rows(M.qdora()) == []
