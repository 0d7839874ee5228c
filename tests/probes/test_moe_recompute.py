"""A checkpointed layer whose frozen grouped experts run again in backward: the recomputation
holds, beside the layer's saved set and its output's gradient, the experts' locals (the
gathered input and act(gate)*up at down's grouped matmul) and the output's gradient already
expanded to the (token, expert) pairs (planner.memory.terms.moe_recompute_locals).
Phi-3.5-MoE at its real widths cut to 2 layers, QDoRA all-linear (the experts stay frozen, fp32)
at batch 4 x 2048, where this instant is the backward peak (its 32k vocabulary keeps the
logits' moment below it). Bound: the backward phase within 0.1% of the trace; the negative
control, without the experts' locals, misses it by more than 2% (a few seconds a trace)."""
import pytest

from planner import TrainSpec
from planner.memory import moments as Mo
from planner.memory import terms as C
from probe_traces import traced
from validate import baselines as B

BOUND = 0.001


def case():
    train = TrainSpec(method="qdora", rank=8, batch_size=4, seq_len=2048, gradient_checkpointing=True, dtype="bf16",
                      precision="autocast")
    return B.spec_for("phi-3.5-moe@2L"), train


def backward(spec, train) -> tuple[int, str]:
    Mo.clear_caches()
    memory = Mo.step_memory(spec, train, "bf16")
    return memory.total("backward"), memory.moments["backward"]


@pytest.mark.slow
def test_frozen_experts_recompute_planned_equals_traced(torch_stack):
    spec, train = case()
    size = traced(spec, train)["backward"]
    planned, moment = backward(spec, train)
    assert moment == "layer_recompute_experts"
    assert abs(planned / size - 1) < BOUND, (planned, size)


@pytest.mark.slow
def test_frozen_experts_recompute_bound_can_fail(torch_stack, monkeypatch):
    """Negative control: without the experts' locals and the pair gradient the plan is under."""
    spec, train = case()
    size = traced(spec, train)["backward"]
    monkeypatch.setattr(C, "moe_recompute_locals", lambda *a: 0)
    try:
        planned, _ = backward(spec, train)
        assert planned / size - 1 < -0.02, (planned, size)
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
