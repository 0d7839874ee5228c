"""Llama 4's shared expert runs after its dense experts, inside Llama4TextMoe.forward (the
routed sum is added into ``shared_expert(hidden_states)``; every expert sees every token):
the planner against the tracer at real widths, Llama-4-Scout cut to 4 layers (the chunked-RoPE
and the no-RoPE attention kinds, every layer with experts), with checkpointing.

What that order changes, each checked by a negative control:

- the shared expert's backward runs before the experts' and frees its saved set, so the
  experts' backward has the recomputed layer but that set (terms.shared_freed_before_experts);
- the shared expert's modules run while the forward holds the experts' scaled input and output
  in locals (terms.routed_outputs_held), and, recomputed, beside the routed sum's gradient
  expanded back to E*T rows, a copy made before the recomputation (terms.routed_gradient_copy).

Measured (planned / traced backward): QDoRA bf16 pure on attention and the shared expert,
rank 4, batch 4 x 1408 (a random-tier draw) 0.9997, 1.0243 without the freed set; QDoRA bf16
autocast all-linear, batch 1 x 2048, 0.9994, 0.9930 before these terms (the experts' backward
over by the shared set, the recomputed shared expert's moment short of the routed locals and
gradient copy). The bound, 0.1%, is the one the other recomputation tests use
(tests/probes/test_post_norm_recompute.py).
"""
import pytest

from planner import TrainSpec, plan
from planner.memory import layer as M
from planner.memory import terms as C
from planner.memory.moments import clear_caches

from probe_traces import traced

BOUND = 0.001
SCOUT = "llama-4-scout@4L"

SHARED_TARGETS = TrainSpec(method="qdora", rank=4, batch_size=4, seq_len=1408, dtype="bf16", precision="pure",
                           gradient_checkpointing=True, double_quant=False, optim="adamw_torch_fused",
                           modules_to_save=("lm_head",),
                           target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "shared_expert.gate_proj",
                                           "shared_expert.up_proj", "shared_expert.down_proj"))
ALL_LINEAR = TrainSpec(method="qdora", rank=8, batch_size=1, seq_len=2048, dtype="bf16", precision="autocast",
                       gradient_checkpointing=True)


def _ratio(train):
    from validate.baselines import spec_for

    spec = spec_for(SCOUT)
    clear_caches()
    try:
        planned = plan(spec, "h200", train, calibrations={}).phases["backward"]
    finally:
        clear_caches()
    return planned / traced(spec, train)["backward"]


@pytest.mark.slow
@pytest.mark.parametrize("train", [SHARED_TARGETS, ALL_LINEAR], ids=["qdora-shared-pure", "qdora-all-autocast"])
def test_shared_expert_after_dense_experts_planned_equals_traced(torch_stack, train):
    assert abs(_ratio(train) - 1) < BOUND


@pytest.mark.slow
def test_shared_set_freed_can_fail(torch_stack, monkeypatch):
    """Negative control: the shared expert's saved set kept at the experts' backward puts the
    plan over by more than the bound."""
    monkeypatch.setattr(C, "shared_freed_before_experts", lambda model, train, prec: 0)
    assert _ratio(SHARED_TARGETS) - 1 > BOUND


@pytest.mark.slow
def test_routed_locals_can_fail(torch_stack, monkeypatch):
    """Negative control: no routed locals at the shared expert's modules: the plan under by
    more than the bound."""
    monkeypatch.setattr(M, "routed_outputs_held", lambda model, train, prec: 0)
    assert 1 - _ratio(ALL_LINEAR) > BOUND


@pytest.mark.slow
def test_routed_gradient_copy_can_fail(torch_stack, monkeypatch):
    """Negative control: no routed gradient copy in flight through the recomputation: the plan
    under by more than the bound."""
    monkeypatch.setattr(C, "routed_gradient_copy", lambda model, train, prec: 0)
    assert 1 - _ratio(ALL_LINEAR) > BOUND
