"""Planner parameter counts vs peft on every catalog model, a wider matrix than `validate` runs."""
import pytest

from planner import model_names
from validate.invariants import planner as P


@pytest.mark.parametrize("name", model_names())
def test_counts_match_peft_wide(name):
    pairs = P.count_pairs([name], P.WIDE_CONFIGS)
    assert len(pairs) == 1 + sum(len(c.methods) for c in P.WIDE_CONFIGS)
    bad = [p for p in pairs if not p.equal]
    assert not bad, bad[:3]


def test_target_sets_cover_fused_and_split_layouts():
    from planner import get_model

    assert P.target_sets(get_model("phi-3-mini"))["attention"] == ("qkv_proj",)
    assert P.target_sets(get_model("phi-3-mini"))["mlp"] == ("gate_up_proj", "down_proj")
    assert P.target_sets(get_model("llama-2-7b"))["attention"] == ("q_proj", "v_proj")
    assert P.target_sets(get_model("llama-2-7b"))["mlp"] == ("gate_proj", "up_proj", "down_proj")


def test_four_bit_count_pitfall_is_half_the_quantized_weights():
    from validate import models as M

    model = M.four_bit()
    packed = sum(m.weight.numel() for _, m in M.linear4bit_layers(model))
    assert P.true_param_count(model) - P.naive_param_count(model) == packed  # each weight counted at half
