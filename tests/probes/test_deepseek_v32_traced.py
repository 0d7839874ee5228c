"""DeepSeek-V3.2 (deepseek_v32) against the exact tracer: a tiny config's fake step equals a real
CPU step to the byte (the sparse-attention indexer under torch.no_grad, its top-k folded into the
mask that SDPA turns into the memory-efficient kernel's bias); no gradient reaches the indexer;
the plan of the real widths cut to a dense and a MoE layer within the memory gate."""
import pytest

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config

TINY = dict(model_type="deepseek_v32", pad_token_id=0, vocab_size=512, hidden_size=128, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
            tie_word_embeddings=False, moe_intermediate_size=48, n_routed_experts=8, num_experts_per_tok=2,
            n_shared_experts=1, first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
            q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
            index_n_heads=4, index_head_dim=32, index_topk=16)


@pytest.mark.slow
@pytest.mark.parametrize("method,gc,seq", [("lora", False, 48), ("full", True, 44)])
def test_fake_trace_equals_cpu_step_to_the_byte(torch_stack, method, gc, seq):
    """Top-k below the sequence (16 of 48 keys: the indexer's mask masks keys), and at seq 44 a
    bias padded to 48 keys; LoRA all-linear (adapters on the indexer too), full fine-tuning with
    checkpointing (the indexer recomputed in backward, its weights without gradients). QLoRA's
    fake step equals its CPU step too (checked when this was written; left out for the CI budget)."""
    from probes import cpu, fake

    spec = model_from_config(TINY, "tiny-deepseek_v32")
    train = TrainSpec(method=method, rank=4, batch_size=2, seq_len=seq, dtype="bf16", gradient_checkpointing=gc)
    real, traced = cpu.measure(spec, train), fake.trace(spec, train)
    assert traced.peak_allocated_bytes == real.peak_allocated_bytes
    assert traced.phase_peaks == real.phase_peaks and traced.breakdown == real.breakdown
    assert real.attention_kernel.split("+")[0] == traced.attention_kernel.split("+")[0] == "efficient"


@pytest.mark.slow
def test_no_gradient_reaches_the_indexer(torch_stack):
    """A real CPU step: peft's all-linear put LoRA on wq_b, wk and weights_proj, and after backward
    every indexer tensor that requires grad has none, adapters and full fine-tuning alike; the
    attention's other adapters have one (the control)."""
    import torch

    from probes.build import build

    spec = model_from_config(TINY, "tiny-deepseek_v32")
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    for method in ("lora", "full"):
        model = build(spec, TrainSpec(method=method, rank=4, batch_size=2, seq_len=32, dtype="bf16"), "cpu")
        model(input_ids=ids, labels=ids).loss.backward()
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        indexer = {n: p for n, p in params.items() if ".indexer." in n}
        assert len(indexer) == (12 if method == "lora" else 10)  # 3 Linears x A, B x 2 layers; + k_norm's 2
        assert all(p.grad is None for p in indexer.values())
        assert all(p.grad is not None for n, p in params.items() if ".q_b_proj." in n)


def test_efficient_attention_with_a_mask_equals_math_attention(torch_stack):
    """The op standing for CUDA's memory-efficient kernel, given the bias a bool mask makes
    (probes.kernels.mask_bias), equals torch's math SDPA with that mask (output and gradients,
    fp64, 12 keys: the bias padded to 16); negative control: without the bias it differs."""
    import torch

    from probes.kernels import efficient_attention, mask_bias

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, d, dtype=torch.float64, requires_grad=True) for d in (12, 12, 8))
    mask = (torch.rand(2, 1, 12, 12) < 0.6) | torch.eye(12, dtype=torch.bool)
    bias = mask_bias(mask, q, k)
    assert bias.untyped_storage().nbytes() == 2 * 12 * 16 * 8 and bias.shape == (2, 3, 12, 12)
    out, _ = efficient_attention(q, k, v, 12 ** -0.5, False, bias)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(out, ref)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.allclose(a, b) for a, b in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))))
    assert not torch.allclose(efficient_attention(q, k, v, 12 ** -0.5, False)[0], ref)


# Real widths cut to a dense and a MoE layer (validate.baselines.spec_for): the mask's bias and
# the indexer's scoring are what differ from DeepSeek-V3; checkpointing at seq 8192 makes the
# indexer's scores (two bf16 [8192, 64, 8192] tensors) the forward's peak.
GATE = 0.05


@pytest.mark.slow
@pytest.mark.parametrize("method,batch,seq,gc", [("qlora", 4, 2048, True), ("full", 1, 8192, True)])
def test_real_widths_planned_within_the_gate(torch_stack, monkeypatch, method, batch, seq, gc):
    from planner.memory import layer as L
    from planner.memory import moments
    from probes.fake import trace
    from validate.baselines import spec_for

    spec = spec_for("deepseek-v3.2-exp@2L")
    train = TrainSpec(method=method, rank=8, batch_size=batch, seq_len=seq, dtype="bf16", gradient_checkpointing=gc)
    p = plan(spec, "h200", train, calibrations={})
    traced = trace(spec, train)
    assert abs(p.peak_allocated_bytes / traced.peak_allocated_bytes - 1) < 0.01
    for phase, bytes_ in traced.phase_peaks.items():
        assert abs(p.phases[phase] / bytes_ - 1) < GATE, (phase, p.phases[phase], bytes_)
    if method != "full":
        return
    # negative control: without the indexer's workspace the checkpointed forward misses the trace
    monkeypatch.setattr(L, "indexer_workspace", lambda *args: 0)
    moments.clear_caches()
    try:
        forward = plan(spec, "h200", train, calibrations={}).phases["forward"]
    finally:
        monkeypatch.undo()
        moments.clear_caches()
    assert forward / traced.phase_peaks["forward"] < 1 - GATE
