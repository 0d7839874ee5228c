"""The Gated DeltaNet hybrids traced: on each kernel path the tracer equals a real CPU step to the
byte on a tiny config, the plan stays within the bound of the trace, and the fused stand-ins
(probes.deltanet_kernels) return what the torch path computes and keep what the kernels keep.

Tiny configs keep what is new: three DeltaNet layers then a gated full-attention one (Qwen3.5's
default interval), value heads twice the key heads (q, k repeated in the torch path), a sequence
that is not a multiple of the 64-token chunk; Qwen3-Next's fused projections with experts and a
shared expert. At real widths (4 layers of Qwen3.5-27B, Qwen3-Next-80B-A3B) the planner is
checked by the baseline matrix's DeltaNet tier (validate.baselines).
"""
import pytest

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config

TINY = dict(pad_token_id=0, vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_key_head_dim=16,
            linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, max_position_embeddings=4096)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
FAMILIES = {"qwen3_5_text": {}, "qwen3_5_moe_text": MOE, "qwen3_next": dict(MOE, norm_topk_prob=True)}
BOUND = 0.03


def _spec(model_type):
    return model_from_config({"model_type": model_type, **TINY, **FAMILIES[model_type]}, f"tiny-{model_type}")


# (the CI budget keeps the rest of the grid out of the suite: every method and family, both paths,
# with and without checkpointing, were byte-equal when run)
BYTE_CASES = [("qwen3_5_text", "lora", "torch", True), ("qwen3_next", "qlora", "fused", False)]


@pytest.mark.slow
@pytest.mark.parametrize("model_type,method,kernels,gc", BYTE_CASES)
def test_fake_trace_equals_cpu_step_to_the_byte(torch_stack, model_type, method, kernels, gc):
    from probes import cpu, fake

    spec = _spec(model_type)
    train = TrainSpec(method=method, rank=4, batch_size=2, seq_len=100, dtype="bf16", kernels=kernels,
                      gradient_checkpointing=gc)
    real, traced = cpu.measure(spec, train), fake.trace(spec, train)
    assert traced.peak_allocated_bytes == real.peak_allocated_bytes
    assert traced.phase_peaks == real.phase_peaks


PLANNED = [("qwen3_5_text", "lora", "torch"), ("qwen3_5_text", "qlora", "fused"), ("qwen3_5_moe_text", "full", "fused"),
           ("qwen3_next", "lora", "torch")]


@pytest.mark.slow
@pytest.mark.parametrize("model_type,method,kernels", PLANNED)
def test_planned_equals_traced_within_bound(torch_stack, model_type, method, kernels):
    from probes.fake import trace

    spec = _spec(model_type)
    train = TrainSpec(method=method, rank=4, batch_size=2, seq_len=100, dtype="bf16", kernels=kernels)
    planned = plan(spec, "a100-80gb", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < BOUND, (planned, traced)


def test_the_paths_differ_in_the_trace(torch_stack):
    """A negative control: the torch path keeps its chunks' fp32 tensors, the fused one does not,
    so the two traces differ (were the stand-ins not patched in, they would be equal)."""
    from probes.fake import trace

    spec = _spec("qwen3_5_text")
    runs = {k: trace(spec, TrainSpec(method="lora", rank=4, batch_size=1, seq_len=70, dtype="bf16", kernels=k))
            for k in ("torch", "fused")}
    assert runs["torch"].peak_allocated_bytes > 1.2 * runs["fused"].peak_allocated_bytes


def _module(torch_stack):
    import torch
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    cfg = m.Qwen3_5TextConfig(**{k: v for k, v in TINY.items() if k != "pad_token_id"},
                              layer_types=["linear_attention"] * 4)
    torch.manual_seed(0)
    return m.Qwen3_5GatedDeltaNet(cfg, 0).to(torch.bfloat16)


def test_fused_stand_ins_compute_the_torch_path(torch_stack):
    """The stand-ins' CPU implementations give the torch path's outputs (same shape, dtype and
    values up to bf16 rounding), so a CPU step on either path trains the same model."""
    import torch

    from probes.deltanet_kernels import fused_kernels

    layer = _module(torch_stack)
    x = torch.randn(2, 70, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = layer(x)
        with fused_kernels():
            fused = layer(x)
        after = layer(x)
    assert fused.shape == reference.shape and fused.dtype == reference.dtype
    assert torch.allclose(fused.float(), reference.float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(after, reference)  # the patch is undone


def test_fused_stand_in_keeps_what_the_kernel_keeps(torch_stack):
    """flash-linear-attention's ChunkGatedDeltaRuleFunction keeps q and k normalized in their
    dtype with fp32 rstd per (token, key head), v contiguous, g's fp32 cumulative sum and A
    (B, T, value heads, 64) in k's dtype (probes.deltanet_kernels); on fake tensors as on CPU."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from probes.deltanet_kernels import _chunk_fwd

    def outputs():
        q = torch.randn(2, 70, 2, 16, dtype=torch.bfloat16)
        v = torch.randn(2, 70, 4, 32, dtype=torch.bfloat16)
        g = -torch.rand(2, 70, 4)
        beta = torch.rand(2, 70, 4, dtype=torch.bfloat16)
        return [(tuple(t.shape), t.dtype) for t in _chunk_fwd(q, q.clone(), v, g, beta, 0.25)]

    real = outputs()
    with FakeTensorMode():
        fake = outputs()
    assert real == fake
    bf16, fp32 = torch.bfloat16, torch.float32
    assert real == [((2, 70, 4, 32), bf16), ((2, 70, 2, 16), bf16), ((280,), fp32), ((2, 70, 2, 16), bf16),
                    ((280,), fp32), ((2, 70, 4, 32), bf16), ((2, 70, 4), fp32), ((2, 70, 4, 64), bf16)]
