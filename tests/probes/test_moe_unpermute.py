"""The end of a layer's grouped experts without checkpointing: the routed output times the
routing weights and its reordered copy (planner.memory.terms.moe_unpermute_transient) beside the
layer's saved set. On one GPU the loss moment, with the logits, hides it; under FSDP the running
layer is all-gathered beside it and it is the forward peak. Checked against rank 0 traced with
torch's fake process group, DeepSeek-V3's real widths cut to a dense and a MoE layer (validate.
baselines.spec_for "deepseek-v3@2L"), LoRA all-linear, fp16 without autocast (DeepSeek-V3's fp32
routing weights make the product fp32), 2 GPUs, batch 4 x 1600 (about 10 s).

Bound, calibrated when written: the plan 0.024% under the trace (99,703,932,928 planned, 99,727,911,784
traced bytes; what is left is the router's fp32 logits and the sort's int64 vectors, a few MB),
held to [-0.2%, +0.5%]; without the term the plan is 2.85% under (96,885,884,928)."""
import pytest

from planner import TrainSpec
from planner.memory import moments as Mo
from planner.memory import terms as C

TRAIN = TrainSpec(method="lora", batch_size=4, seq_len=1600, dtype="fp16", precision="pure", num_gpus=2,
                  sharding="fsdp")


def _ratio(model, traced: int) -> float:
    Mo.clear_caches()
    memory = Mo.step_memory(model, TRAIN, "fp16")
    return memory.total("forward") / traced


def test_fsdp_forward_peak_at_the_experts_unpermute(torch_stack, monkeypatch):
    from probes import parallel
    from validate.baselines import spec_for

    model = spec_for("deepseek-v3@2L")
    traced = parallel.trace(model, TRAIN, 2, "fsdp")
    assert traced.peak_phase == "forward"
    assert 0.998 < _ratio(model, traced.phase_peaks["forward"]) < 1.005
    # negative control: without the product and its reordered copy the plan is under the trace
    monkeypatch.setattr(C, "moe_unpermute_transient", lambda model, train, prec: 0)
    try:
        assert _ratio(model, traced.phase_peaks["forward"]) < 0.98
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
