"""LFM2's gated short convolution under QLoRA: in_proj returns its fp32 input's dtype, so B*x,
the in_proj output and the conv output are fp32 on the fused path (causal-conv1d keeps its
input's dtype), while the torch path's F.conv1d runs in bf16 under autocast and casts its output
back to fp32 (transformers modeling_lfm2.causal_conv1d_fn). Planned against the tracer at
LFM2-1.2B's real widths cut to a conv and an attention layer."""
import pytest

from planner import TrainSpec, plan

# Measured (tracer, r8 all-linear, batch 1 x 2048, no checkpointing): every case within 0.01%;
# with every short-conv tensor counted in the compute dtype the plan was 1.3% (fused) and 1.0%
# (torch) under for QLoRA autocast, 1.4% under for QLoRA pure (the torch path all fp32).
CASES = [("fused", "autocast"), ("torch", "autocast"), ("torch", "pure")]


@pytest.mark.slow
@pytest.mark.parametrize("kernels,precision", CASES)
def test_lfm2_qlora_short_conv_planned_equal_traced(torch_stack, kernels, precision):
    from probes.fake import trace
    from validate.baselines import spec_for

    spec = spec_for("lfm2-1.2b@2L")
    assert [k.name for k in spec.kinds] == ["short_conv", "attention"]
    train = TrainSpec(method="qlora", rank=8, batch_size=1, seq_len=2048, dtype="bf16", precision=precision,
                      kernels=kernels)
    planned = plan(spec, "h100", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < 0.0005, (planned, traced)
