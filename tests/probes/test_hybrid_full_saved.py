"""Full fine-tuning of the hybrids' layers: what their trainable Linears and Mamba-2 mixers keep,
the planner against the tracer at real widths (Nemotron-H-8B cut to a Mamba-2, an MLP and an
attention layer; Granite-4.0-H-Tiny to a Mamba-2 and an attention layer, both with experts),
batch 1 x 2048, bf16 autocast, at the backward phase.

- A hybrid layer's Linears keep the inputs of the blocks it has: Nemotron-H's Mamba-2 and
  attention layers one bf16 norm output, its MLP layer one and down_proj's input
  (terms.linear_inputs_saved; a dense layer's attention and MLP inputs in every layer had the
  fused path 1.3% over).
- Its RMSNorm multiplies the weight in fp32 (the rms_fp32_out trait): the fp32 product is saved.
- The Mamba-2 torch path with trained mixer parameters keeps D's padded fp32 input, the gated
  norm's fp32 normalized input, out_proj's input and an fp32 T*H for dt_bias
  (mixers.mamba_torch_saved; Granite-4.0-H 1.0% under without them).

Measured (planned / traced backward): Nemotron-H torch 0.99999, fused 0.99999, Granite-4.0-H torch
1.00014; before these terms 0.9993 (a 2.3% gap in its Mamba-2 layer hidden by the others' excess),
1.0130 and 0.9903.
"""
import dataclasses

import pytest

from planner import TrainSpec
from planner.memory import mixers
from planner.memory import terms as C
from planner.model.architectures import MLP_INPUT_ROLES

from probe_traces import planned_over_traced

BOUND = 0.001
CASES = [("nemotron-h-8b@3L", "torch"), ("nemotron-h-8b@3L", "fused"), ("granite-4.0-h-tiny@2L", "torch")]


def _ratio(name, kernels):
    from validate.baselines import spec_for

    spec = spec_for(name)
    train = TrainSpec(method="full", batch_size=1, seq_len=2048, dtype="bf16", kernels=kernels)
    return planned_over_traced(spec, train)


@pytest.mark.slow
@pytest.mark.parametrize("name,kernels", CASES)
def test_hybrid_full_planned_equals_traced(torch_stack, name, kernels):
    assert abs(_ratio(name, kernels) - 1) < BOUND


@pytest.mark.slow
def test_dense_layer_inputs_in_every_layer_can_fail(torch_stack, monkeypatch):
    """Negative control: an MLP's input and down_proj's input kept in the layers without an MLP
    put Nemotron-H's fused plan over by more than the bound."""
    original = C.linear_inputs_saved

    def dense(model, train, prec):
        extra = 0
        if not model.layer.by_role(*MLP_INPUT_ROLES):
            extra = train.tokens * (model.hidden_size + model.intermediate_size) * prec.compute
        return original(model, train, prec) + extra

    monkeypatch.setattr(C, "linear_inputs_saved", dense)
    assert _ratio("nemotron-h-8b@3L", "fused") - 1 > BOUND


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nemotron-h-8b@3L", "granite-4.0-h-tiny@2L"])
def test_trained_mixer_parameters_can_fail(torch_stack, monkeypatch, name):
    """Negative control: the torch path's saved set as with frozen mixer parameters puts the plan
    under by more than the bound."""
    original = mixers.mamba_torch_saved
    monkeypatch.setattr(mixers, "mamba_torch_saved",
                        lambda m, train, prec: original(m, dataclasses.replace(train, method="lora"), prec))
    assert 1 - _ratio(name, "torch") > BOUND
