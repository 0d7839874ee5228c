"""Targets only a later layer kind holds: DeepSeek-V3's real widths cut to a dense and a MoE
layer (validate.baselines.spec_for "deepseek-v3@2L"), LoRA on ``down_proj``, which peft rewrites
to the experts' fused down only. Nothing before the experts needs a gradient: the dense layer and
the MoE layer's attention, router and shared expert keep nothing, and the experts keep no merged
down weight (planner.memory.terms.leading_unrecorded, routed_experts_unrecorded), which still
lives while they run (the forward peak, at their end) and whose gradient meets lora_B's in
backward (terms.moe_unkept_merge_backward). One trace, bf16 autocast, batch 1 x 512 (about 8 s).

Bound, calibrated when written: forward 0.9999, backward 1.0006 of the trace (36,211,059,712 and
36,071,599,104 planned; 36,214,531,336 and 36,050,390,288 traced bytes), held to [-0.2%, +0.5%]
per phase; the plan was 1.21 over the peak (backward 43,799,654,400) with every layer keeping
its whole set and the merged weight."""
from planner import TrainSpec
from planner.memory import moments as Mo
from planner.memory import terms as C

TRAIN = TrainSpec(method="lora", target_modules=("down_proj",), batch_size=1, seq_len=512, dtype="bf16")


def _ratios(model, traced) -> dict:
    Mo.clear_caches()
    memory = Mo.step_memory(model, TRAIN, "bf16")
    return {p: memory.total(p) / traced.phase_peaks[p] for p in ("forward", "backward")}


def test_layers_before_the_first_target_keep_nothing(torch_stack, monkeypatch):
    from probes.fake import trace
    from validate.baselines import spec_for

    model = spec_for("deepseek-v3@2L")
    assert C.first_targeted_layer(model, TRAIN) == 1
    traced = trace(model, TRAIN)
    for ratio in _ratios(model, traced).values():
        assert 0.998 < ratio < 1.005
    # negative control: the dense layer 0 read as the first layer, the MoE layer keeping its whole set
    monkeypatch.setattr(C, "first_targeted_layer", lambda model, train: 0)
    try:
        assert _ratios(model, traced)["backward"] > 1.15
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
