"""DoRA / QDoRA with gradient checkpointing: the recomputed layer's worst moment, at a
module's weight norm, against the exact tracer.

While checkpointing recomputes the last layer, down_proj's DoRA weight norm runs beside the
recomputed saved set, the forward's Python locals (with a 16-bit residual stream: the attention
block's sum and the post-attention norm output, planner.memory.layer.recompute_locals), the
base layer's output peft made first (Dora.norm_context) and the gradients made before the
recomputation (planner.memory.terms.recompute_incoming_grads). Mistral-7B cut to 2 layers at
batch 2 x 1024, so that this moment is the backward peak (a toy Llama's weight-norm and
activation shapes make another moment its peak). Bound: the backward phase within
0.2% of the trace (calibrated on these cases); the negative control drops the locals and the
base output and misses by more.
"""
import pytest

from planner import TrainSpec, plan
from planner.memory.moments import step_memory
from probe_traces import traced
from planner.memory.moments import clear_caches

BOUND = 0.002
CASES = ["dora", "qdora"]


def tiny():
    from validate.baselines import spec_for, with_layers

    return with_layers(spec_for("mistral-7b"), 2, "mistral-7b@2L")


def gc_train(method):
    return TrainSpec(method=method, rank=8, batch_size=2, seq_len=1024, dtype="bf16", precision="autocast",
                     optim="sgd", gradient_checkpointing=True, target_modules=("all-linear",))


@pytest.mark.slow
@pytest.mark.parametrize("method", CASES)
def test_recompute_dora_moment_planned_equals_traced(torch_stack, method):
    spec, train = tiny(), gc_train(method)
    clear_caches()
    assert step_memory(spec, train, "bf16").moments["backward"].endswith("recompute_module")
    planned = plan(spec, "a100-80gb", train, calibrations={}).phases["backward"]
    size = traced(spec, train)["backward"]
    assert abs(planned / size - 1) < BOUND, (planned, size)


@pytest.mark.slow
@pytest.mark.parametrize("method", CASES)
def test_recompute_dora_bound_can_fail(torch_stack, monkeypatch, method):
    """Negative control: without the recomputation's locals and the base output beside the
    weight norm, the plan misses the traced backward by more than the bound."""
    from planner.memory import layer as M
    from planner.memory.variants import Dora

    spec, train = tiny(), gc_train(method)
    monkeypatch.setattr(M, "recompute_locals", lambda *a: 0)
    monkeypatch.setattr(Dora, "norm_context", lambda *a: 0)
    clear_caches()
    try:
        planned = plan(spec, "a100-80gb", train, calibrations={}).phases["backward"]
    finally:
        clear_caches()
    size = traced(spec, train)["backward"]
    assert planned / size - 1 < -BOUND, (planned, size)
