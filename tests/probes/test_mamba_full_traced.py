"""Full fine-tuning of a Mamba-2 layer on transformers' torch path: the mixer's trained
parameters make their products keep the other factor (D's padded x, the gated norm weight's
normalized input, A's dt; planner.memory.mixers.mamba_torch_saved). Planned against the tracer
at Granite-4.0-H-Tiny's real widths cut to a Mamba-2 and an attention layer."""
import pytest

from planner import TrainSpec, plan


# Measured (tracer, batch 1 x 2048, no checkpointing): 0.18% under (the mixer's own saved set
# equal to the byte, tests/probes/test_hybrids_traced.py; the rest lies outside it, 0.27% at
# 1 x 8192); 0.97% under without the trained parameters' tensors.
@pytest.mark.slow
def test_granite_h_full_torch_path_planned_within_bound(torch_stack):
    from probes.fake import trace
    from validate.baselines import spec_for

    spec = spec_for("granite-4.0-h-tiny@2L")
    assert [k.name for k in spec.kinds] == ["mamba2", "attention"]
    train = TrainSpec(method="full", batch_size=1, seq_len=2048, dtype="bf16", kernels="torch")
    planned = plan(spec, "h100", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert -0.003 < planned / traced - 1 < 0.001, (planned, traced)
