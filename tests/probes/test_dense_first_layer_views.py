"""A dense first layer's in-layer moments read beside the saved sets of the layers before it
only (planner.memory.moments.Step.unrun): DeepSeek-V3.2-Exp's real widths cut to a dense and a
MoE layer (validate.baselines.spec_for "deepseek-v3.2-exp@2L"), LoRA all-linear without
checkpointing, batch 1 x 8192, where the dense layer's indexer scoring is the largest in-layer
transient. One trace (about 10 s).

Bound, calibrated when written: forward 1.0000 of the trace (72,809,537,536 planned, 72,809,670,008
traced bytes, the loss), held to [-0.2%, +0.5%]; with the MoE layer's saved set beside the dense
layer's scoring, as if it came last, the plan was 7.75% over the forward (78,454,743,040)."""
from planner import TrainSpec
from planner.memory import moments as Mo

TRAIN = TrainSpec(method="lora", batch_size=1, seq_len=8192, dtype="bf16")


def _ratio(model, traced: int) -> float:
    Mo.clear_caches()
    return Mo.step_memory(model, TRAIN, "bf16").total("forward") / traced


def test_dense_first_layer_reads_only_the_layers_before_it(torch_stack, monkeypatch):
    from probes.fake import trace
    from validate.baselines import spec_for

    model = spec_for("deepseek-v3.2-exp@2L")
    traced = trace(model, TRAIN).phase_peaks["forward"]
    assert 0.998 < _ratio(model, traced) < 1.005
    # negative control: the later layers' saved sets beside the dense layer, as if it came last
    monkeypatch.setattr(Mo.Step, "unrun", property(lambda self: 0))
    try:
        assert _ratio(model, traced) > 1.05
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
