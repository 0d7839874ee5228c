"""The hybrids (Granite-4.0-H, Nemotron-H, LFM2) traced: the torch path's fake trace equals a
real CPU step to the byte; the traced fused ops (probes.mixer_kernels) return what the torch
path returns (shapes and dtypes on fake tensors, values on real ones) and keep what the kernels
keep; the planner stays within the bound of the trace on either path.

Each tiny config holds every kind of its family: Granite a Mamba-2 and an attention layer with
experts and the shared MLP; Nemotron-H a Mamba-2, an MLP-only and an attention-only layer; LFM2
a short-convolution and an attention layer. At real widths cut to a few layers the planner is
checked by the baseline matrix's tier (validate.baselines.HYBRID_FAMILY_MODELS).
"""
import pytest

from planner import TrainSpec, plan
from planner.model.catalog import model_from_config

BASE = dict(pad_token_id=0, vocab_size=512, hidden_size=64, intermediate_size=160, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
FAMILIES = {
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], num_hidden_layers=2, intermediate_size=32,
                             shared_intermediate_size=48, num_local_experts=4, num_experts_per_tok=2,
                             mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16, mamba_n_groups=1,
                             mamba_chunk_size=16, position_embedding_type="nope"),
    "nemotron_h": dict(hybrid_override_pattern="M-*", num_hidden_layers=3, head_dim=16, mamba_num_heads=4,
                       mamba_head_dim=16, ssm_state_size=16, n_groups=2, chunk_size=16),
    "lfm2": dict(layer_types=["conv", "full_attention"], num_hidden_layers=2, block_multiple_of=16),
}
# peft refuses LoRA on a Mamba out_proj of nemotron_h (planner.model.targets.check_peft_refusals)
TARGETS = {"nemotron_h": ("in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")}
BOUND = 0.03


def _spec(model_type):
    return model_from_config({"model_type": model_type, **BASE, **FAMILIES[model_type]}, f"tiny-{model_type}")


def _train(model_type, **kw):
    base = dict(method="lora", rank=4, batch_size=2, seq_len=40, dtype="bf16",
                target_modules=TARGETS.get(model_type, ("all-linear",)))
    return TrainSpec(**{**base, **kw})


@pytest.mark.slow
# (the CI budget keeps two: Nemotron-H's three kinds, its Mamba-2 mixer the same as Granite's, and LFM2's
# short convolution with checkpointing; Granite's both methods and checkpointing were byte-equal when run)
@pytest.mark.parametrize("model_type,method,gc", [("nemotron_h", "lora", False), ("lfm2", "lora", True)])
def test_torch_path_fake_trace_equals_cpu_step_to_the_byte(torch_stack, model_type, method, gc):
    from probes import cpu, fake

    spec = _spec(model_type)
    train = _train(model_type, method=method, gradient_checkpointing=gc, kernels="torch")
    real, traced = cpu.measure(spec, train), fake.trace(spec, train)
    assert traced.peak_allocated_bytes == real.peak_allocated_bytes
    assert traced.phase_peaks == real.phase_peaks


@pytest.mark.slow
@pytest.mark.parametrize("model_type,kernels", [("nemotron_h", "torch"), ("granitemoehybrid", "fused"),
                                                ("lfm2", "fused")])
def test_planned_equals_traced_within_bound(torch_stack, model_type, kernels):
    from probes.fake import trace

    spec = _spec(model_type)
    train = _train(model_type, seq_len=64, kernels=kernels)
    planned = plan(spec, "a100-80gb", train, calibrations={}).peak_allocated_bytes
    traced = trace(spec, train).peak_allocated_bytes
    assert abs(planned / traced - 1) < BOUND, (planned, traced)


def _mamba_inputs(torch, dtype=None):
    torch.manual_seed(0)
    b, s, heads, p, n, g = 2, 40, 4, 16, 8, 2
    d = heads * p
    conv = d + 2 * g * n
    dtype = dtype or torch.float32
    return dict(zxbcdt=torch.randn(b, s, d + conv + heads, dtype=dtype), conv1d_weight=torch.randn(conv, 4, dtype=dtype),
                conv1d_bias=torch.randn(conv, dtype=dtype), dt_bias=torch.rand(heads, dtype=dtype),
                A=-torch.rand(heads), D=torch.ones(heads, dtype=dtype), chunk_size=16, activation="silu",
                rmsnorm_weight=torch.rand(d, dtype=dtype), rmsnorm_eps=1e-6,
                outproj_weight=torch.randn(64, d, dtype=dtype), outproj_bias=None, headdim=p, ngroups=g,
                norm_before_gate=False, dt_limit=(0.0, float("inf")))


def _torch_mamba(torch, kw):
    """transformers' torch path of the same mixer (GraniteMoeHybridMambaLayer.forward after the
    fused call): conv + SiLU, mamba2_chunk_scan, the gated RMSNorm, out_proj."""
    from transformers.models.granitemoehybrid import modeling_granitemoehybrid as mg

    zxbcdt, heads, p, g = kw["zxbcdt"], kw["D"].shape[0], kw["headdim"], kw["ngroups"]
    d, b, s = heads * p, zxbcdt.shape[0], zxbcdt.shape[1]
    n = (kw["conv1d_weight"].shape[0] - d) // (2 * g)
    z, xbc, dt = zxbcdt.split([d, d + 2 * g * n, heads], dim=-1)
    xbc = mg.causal_conv1d_fn(xbc.transpose(1, 2), kw["conv1d_weight"], kw["conv1d_bias"], activation="silu")
    x, bb, cc = xbc.transpose(1, 2).split([d, g * n, g * n], dim=-1)
    y = mg.mamba2_chunk_scan(x.reshape(b, s, heads, p), dt, kw["A"], bb.reshape(b, s, g, n), cc.reshape(b, s, g, n),
                             chunk_size=kw["chunk_size"], D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True)
    norm = mg.GraniteMoeHybridRMSNormGated(d, group_size=d // g, eps=kw["rmsnorm_eps"])
    norm.weight.data = kw["rmsnorm_weight"]
    return torch.nn.functional.linear(norm(y.reshape(b, s, d), z).to(zxbcdt.dtype), kw["outproj_weight"])


def test_fused_mamba_op_equals_the_torch_path(torch_stack):
    import torch

    from probes import mixer_kernels as mk

    kw = _mamba_inputs(torch)
    fused = mk.mamba_split_conv1d_scan_combined(**kw)
    reference = _torch_mamba(torch, kw)
    assert fused.shape == reference.shape and fused.dtype == reference.dtype
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4)
    # negative control: another chunk length computes the same scan, another D does not
    other = mk.mamba_split_conv1d_scan_combined(**{**kw, "D": kw["D"] * 2})
    assert not torch.allclose(other, reference, atol=1e-3)


def test_fused_mamba_gradients_equal_the_torch_paths(torch_stack):
    import torch

    from probes import mixer_kernels as mk

    kw = _mamba_inputs(torch)
    kw["zxbcdt"].requires_grad_(True)
    grad_fused, = torch.autograd.grad(mk.mamba_split_conv1d_scan_combined(**kw).sum(), kw["zxbcdt"])
    grad_torch, = torch.autograd.grad(_torch_mamba(torch, kw).sum(), kw["zxbcdt"])
    torch.testing.assert_close(grad_fused, grad_torch, rtol=1e-3, atol=1e-3)


def test_fake_fused_mamba_keeps_what_the_kernel_saves(torch_stack):
    """On fake tensors the op returns the torch path's shape and dtype and keeps zxbcdt, out_x
    (b, s, d) and rstd (G*b*s fp32) beside the parameters (ssd_combined.py line 888)."""
    import torch

    from probes import mixer_kernels as mk
    from probes.fake import new_fake_mode

    with new_fake_mode():
        kw = _mamba_inputs(torch, torch.bfloat16)
        kw["zxbcdt"].requires_grad_(True)
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            out = mk.mamba_split_conv1d_scan_combined(**kw)
    assert out.shape == (2, 40, 64) and out.dtype == torch.bfloat16
    shapes = sorted((tuple(t.shape), t.dtype) for t in kept if t.dim() > 1 or t.numel() > 64)
    assert ((2, 40, 64), torch.bfloat16) in shapes  # out_x
    assert ((2 * 2 * 40,), torch.float32) in shapes  # rstd
    assert ((2, 40, kw["zxbcdt"].shape[-1]), torch.bfloat16) in shapes  # zxbcdt


def test_fused_causal_conv_equals_the_torch_path(torch_stack):
    import torch

    from probes import mixer_kernels as mk
    from transformers.models.lfm2 import modeling_lfm2 as ml

    torch.manual_seed(0)
    x, w = torch.randn(2, 64, 40), torch.randn(64, 3)
    torch.testing.assert_close(mk.causal_conv1d_fn(x, w, None), ml.causal_conv1d_fn(x, w, None))


def test_a_4bit_out_proj_cannot_reach_the_fused_kernel(torch_stack):
    import torch

    from probes import mixer_kernels as mk

    kw = _mamba_inputs(torch)
    with pytest.raises(TypeError, match="4-bit"):
        mk.mamba_split_conv1d_scan_combined(**{**kw, "outproj_weight": torch.zeros(64, 1, dtype=torch.uint8)})


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_what_peft_adapts_and_bitsandbytes_packs_is_planned(torch_stack, model_type):
    """The modules peft wraps (its all-linear, or Nemotron-H's named targets: in_proj and not
    out_proj or conv1d) and, under QLoRA, the Linear4bit modules, layer by layer, equal the
    planner's targeted Linears and 4-bit weights of each layer's kind (no conv, A_log, D)."""
    import bitsandbytes as bnb

    from planner.model import inventory, targets
    from probes.build import build

    spec = _spec(model_type)
    train = _train(model_type, method="qlora")  # (LoRA adapts the same modules)
    model = build(spec, train, "meta")
    adapted, packed = set(), set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if "layers" not in parts or len(parts) < parts.index("layers") + 3:
            continue
        i = parts.index("layers")
        layer, inner = int(parts[i + 1]), ".".join(parts[i + 2:])
        if hasattr(module, "lora_A") and inner:
            adapted.add((layer, inner))
        if isinstance(module, bnb.nn.Linear4bit):
            packed.add((layer, inner.removesuffix(".base_layer")))
    planned_adapted, planned_packed = set(), set()
    four_bit = {(t.kind, t.path) for t in inventory.inventory(spec, train, 2) if t.treatment == "4bit"}
    for view, kind in zip(spec.by_kind(), spec.kinds):
        names = {lin.name for lin in targets.targeted_linears(view, train.target_modules)}
        for i in kind.indices:
            planned_adapted |= {(i, n) for n in names}
            planned_packed |= {(i, p.removeprefix("layers.*.").removesuffix(".weight"))
                               for k, p in four_bit if k == kind.name}
    assert adapted == planned_adapted
    assert packed == planned_packed
    assert not any("conv" in n and "proj" not in n for _, n in adapted)


@pytest.mark.parametrize("model_type", ["granitemoehybrid", "lfm2"])
def test_a_real_step_with_the_fused_ops_equals_the_torch_path(torch_stack, model_type):
    """A tiny fp32 model's training forward and backward on CPU: the loss and in_proj's weight
    gradient with the traced fused ops swapped in (probes.mixer_kernels.fused_kernels) equal
    the torch path's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from probes.mixer_kernels import fused_kernels

    fields = {k: v for k, v in {**BASE, **FAMILIES[model_type]}.items()}
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    ids = torch.randint(0, 512, (2, 40))
    in_proj = next(p for n, p in model.named_parameters() if n.endswith("in_proj.weight"))

    def step(kernels):
        model.zero_grad()
        with fused_kernels(model_type, kernels):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.detach(), in_proj.grad.clone()

    (loss_t, grad_t), (loss_f, grad_f) = step("torch"), step("fused")
    torch.testing.assert_close(loss_f, loss_t, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_f, grad_t, rtol=1e-3, atol=1e-4)
    # the swap is undone after the block
    from transformers.models.granitemoehybrid import modeling_granitemoehybrid as mg

    assert mg.mamba2_split_conv1d_scan_combined.__module__.startswith("transformers")


MAMBA_ONLY = dict(pad_token_id=0, vocab_size=512, hidden_size=128, intermediate_size=32, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, layer_types=["mamba"], num_hidden_layers=1,
                  shared_intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, mamba_n_heads=8,
                  mamba_d_head=32, mamba_d_state=16, mamba_n_groups=1, mamba_chunk_size=32,
                  position_embedding_type="nope")


def _mixer_saved_traced(torch, spec, train) -> int:
    """The bytes the Mamba-2 mixer's forward keeps for backward on the torch path, on fake
    tensors: every storage a saved-tensor hook sees inside the mixer, outside its in_proj and
    out_proj (their adapters' inputs are the adapter kind's), less parameters and the mixer's input."""
    from probes import fake
    from probes.build import probe_model, resolve_precision
    from probes.kernels import cuda_autocast_layer_norm
    from probes.step import compute_loss, synthetic_batch

    fake.allow_grouped_mm_in_any_dtype()
    model, mode = fake.build_fake(probe_model(spec, train), train)
    mixer = next(m for n, m in model.named_modules() if n.endswith("layers.0.mamba"))
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    kept, state = {}, {"on": False, "depth": 0, "input": None}

    def pack(t):
        storage = t.untyped_storage()
        if state["on"] and not state["depth"] and storage._cdata not in params | {state["input"]}:
            kept[storage._cdata] = storage.nbytes()
        return t

    def enter(module, args, kwargs):
        state["on"], state["input"] = True, (args[0] if args else kwargs["hidden_states"]).untyped_storage()._cdata

    mixer.register_forward_pre_hook(enter, with_kwargs=True)
    mixer.register_forward_hook(lambda *a: state.update(on=False))
    for linear in (mixer.in_proj, mixer.out_proj):
        linear.register_forward_pre_hook(lambda *a: state.update(depth=state["depth"] + 1))
        linear.register_forward_hook(lambda *a: state.update(depth=state["depth"] - 1))
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    precision = resolve_precision(train, "fake")
    with mode, fake.plain_positions(), cuda_autocast_layer_norm(model), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute_loss(model, mode.from_tensor(ids), precision)
    return sum(kept.values())


@pytest.mark.slow
def test_torch_path_mamba_saved_set_in_every_precision(torch_stack):
    """The torch path's saved set (planner.memory.mixers.mamba_torch_saved) to the byte, traced
    with saved-tensor hooks, where the three dtypes differ: in_proj's output (fp32 from a 4-bit
    in_proj), the mixer's parameters (fp32 for a 4-bit method and under mixed) and autocast (the
    einsums' operands cast to bf16, else mamba2_chunk_scan's fp32). Batch 2 x 72: the chunks are
    padded (Q 32). Negative control: the autocast plan of a pure step is under its trace (the
    Granite-4.0-H-Tiny QDoRA pure row was 5.4% under with it)."""
    import dataclasses

    import torch

    from planner.memory import mixers, terms as C

    spec = model_from_config({"model_type": "granitemoehybrid", **MAMBA_ONLY}, "tiny-granite-mamba")
    view = spec.by_kind()[0]
    for method, precision in (("qdora", "pure"), ("qlora", "autocast"), ("lora", "pure"), ("lora", "mixed"),
                              ("full", "autocast")):
        train = TrainSpec(method=method, precision=precision, dtype="bf16", rank=4, batch_size=2, seq_len=72,
                          kernels="torch")
        prec = C.precision(train, "bf16")
        traced = _mixer_saved_traced(torch, spec, train)
        assert mixers.mixer_saved(view, train, prec) == traced, (method, precision)
        if precision == "pure":
            assert mixers.mixer_saved(view, train, dataclasses.replace(prec, autocast=True)) < traced
