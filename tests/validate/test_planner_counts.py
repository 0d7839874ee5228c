"""Planner parameter counts vs peft, a wider matrix than `validate` runs: on the smallest
catalog model of each architecture (`validate`'s own invariant, run by test_invariants.py,
covers every catalog model with its quicker configurations)."""
import pytest

from planner import get_model, model_names
from planner.model import counts
from validate.invariants import planner as P


def smallest_of_each_architecture() -> list[str]:
    chosen: dict[str, str] = {}
    for name in model_names():
        spec = get_model(name)
        best = chosen.get(spec.model_type)
        if best is None or counts.total_params(spec) < counts.total_params(get_model(best)):
            chosen[spec.model_type] = name
    return sorted(chosen.values())


def test_every_architecture_is_represented():
    assert {get_model(n).model_type for n in smallest_of_each_architecture()} == {
        get_model(n).model_type for n in model_names()}


@pytest.mark.parametrize("name", smallest_of_each_architecture())
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
