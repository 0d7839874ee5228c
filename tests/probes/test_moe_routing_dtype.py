"""A mixture of experts whose routing weights are fp32 while the stream is not (DeepSeek-V3's
fp32 router without autocast): the down output times the routing weights, and the unpermuted
result, are fp32 (type promotion), which the forward of a checkpointed layer with LoRA on the
experts holds (planner.memory.terms.moe_forward_workspace). Planned against the fake trace at
DeepSeek-V3's widths cut to a dense and a MoE layer (a few seconds)."""

from planner import TrainSpec
from planner.memory import moments as Mo
from planner.memory import terms as C
from validate import baselines as B


def test_fp32_routing_weights_widen_the_experts_forward(torch_stack, monkeypatch):
    from probes.fake import trace

    spec = B.spec_for("deepseek-v3@2L")
    train = TrainSpec(method="lora", rank=8, batch_size=4, seq_len=1920, gradient_checkpointing=True, dtype="bf16",
                      precision="pure")
    traced = trace(spec, train).phase_peaks["forward"]

    def forward(routing_bytes=None) -> int:
        Mo.clear_caches()
        if routing_bytes is not None:
            monkeypatch.setattr(C, "routing_weight_bytes", lambda model, prec: routing_bytes)
        memory = Mo.step_memory(spec, train, "bf16")
        assert memory.moments["forward"] == "layer_experts"
        return memory.total("forward")

    try:
        assert abs(forward() / traced - 1) < 0.001
        # negative control: routing weights in the stream's dtype (bf16), the products too
        assert forward(routing_bytes=2) / traced < 0.98
    finally:
        monkeypatch.undo()
        Mo.clear_caches()
