"""The time model: FLOPs per named term worked by hand, the roofline, calibration, totals."""
import math

import pytest

from planner import TrainSpec, plan
from planner.time import roofline as R
from planner.time import calibration as S
from planner.time import timing
from planner.model.catalog import get_gpu, get_model
from planner.model.counts import linear_weight_params

T4, H100 = get_gpu("t4"), get_gpu("h100-80gb")

# tiny (tests/planner/conftest.py): per layer q 8x8, k 8x4, v 8x4, o 8x8, gate 8x16, up 8x16,
# down 16x8: sum(in*out) = 64+32+32+64+128+128+128 = 576, sum(in+out) = 16+12+12+16+24+24+24 = 128;
# two layers; lm_head 8x10 = 80.
TINY_N, TINY_IN_OUT, TINY_HEAD = 2 * 576, 2 * 128, 80


def flops(st, key):
    return st.terms.get(key, {}).get("flops", 0)


def test_full_fine_tuning_is_six_n_t(tiny):
    """6*N*T: forward 2NT, input gradients 2NT, weight gradients 2NT (Kaplan et al. 2020)."""
    st = timing.step_time(tiny, T4, TrainSpec(method="full", seq_len=4), "fp16")
    t = 4
    assert flops(st, "forward/matmul") == 2 * t * (TINY_N + TINY_HEAD)
    assert flops(st, "backward/input_grad") == 2 * t * (TINY_N + TINY_HEAD)
    assert flops(st, "backward/weight_grad") == 2 * t * (TINY_N + TINY_HEAD)
    assert "adapters/matmul" not in st.terms and "qlora/dequant" not in st.terms


def test_frozen_base_lora_is_four_n_t_plus_adapters(tiny):
    """A frozen base has no weight gradients: 4*N*T, plus the adapters' 6*T*r*sum(in + out)."""
    st = timing.step_time(tiny, T4, TrainSpec(method="lora", rank=2, seq_len=4), "fp16")
    t = 4
    base = flops(st, "forward/matmul") + flops(st, "backward/input_grad")
    assert base == 4 * t * (TINY_N + TINY_HEAD)
    assert "backward/weight_grad" not in st.terms  # negative control: nothing trains the base
    assert flops(st, "adapters/matmul") == 6 * t * 2 * TINY_IN_OUT


def test_flash_attention_is_causal_half_and_backward_two_and_a_half(tiny):
    """2*b*s^2*q_dim per layer forward (half of 4*b*s^2*q_dim), 2.5x that backward; eager
    computes the full square, twice backward."""
    train = TrainSpec(method="lora", rank=2, seq_len=4, batch_size=3)
    st = timing.step_time(tiny, T4, train, "fp16")
    fwd = 2 * (2 * 3 * 4 * 4 * 8)
    assert flops(st, "attention/core") == fwd + 2.5 * fwd
    eager = timing.step_time(tiny, T4, train.with_(attn_implementation="eager"), "fp16")
    assert flops(eager, "attention/core") == 3 * (2 * (4 * 3 * 4 * 4 * 8))


def test_checkpointing_recomputes_the_layers_forward_only(tiny):
    """recompute/forward = the decoder layers' forward FLOPs again (not lm_head)."""
    train = TrainSpec(method="lora", rank=2, seq_len=4)
    on = timing.step_time(tiny, T4, train.with_(gradient_checkpointing=True), "fp16")
    off = timing.step_time(tiny, T4, train, "fp16")
    t = 4
    layer_fwd = 2 * t * TINY_N + 2 * t * 2 * TINY_IN_OUT + 2 * (2 * 1 * 4 * 4 * 8)
    assert flops(on, "recompute/forward") == layer_fwd
    assert "recompute/forward" not in off.terms
    assert on.step_seconds > off.step_seconds
    assert on.model_flops == off.model_flops  # MFU does not count recomputation


def test_dora_and_qlora_terms_only_where_they_belong(tiny):
    lora = timing.step_time(tiny, T4, TrainSpec(method="lora", rank=2, seq_len=4), "fp16")
    dora = timing.step_time(tiny, T4, TrainSpec(method="dora", rank=2, seq_len=4), "fp16")
    qlora = timing.step_time(tiny, T4, TrainSpec(method="qlora", rank=2, seq_len=4), "fp16")
    assert "dora/weight_norm" not in lora.terms and "qlora/dequant" not in lora.terms
    # DoRA: 2*r*in*(in + out) per adapted Linear per forward (the identity through A then B)
    per_layer = sum(2 * 2 * i * (i + o) for i, o in
                    ((8, 8), (8, 4), (8, 4), (8, 8), (8, 16), (8, 16), (16, 8)))
    assert flops(dora, "dora/weight_norm") == 2 * per_layer
    assert "dora/dropout_matmul" not in dora.terms  # dropout 0: peft reuses the base result
    dropped = timing.step_time(tiny, T4, TrainSpec(method="dora", rank=2, seq_len=4, lora_dropout=0.1), "fp16")
    assert flops(dropped, "dora/dropout_matmul") == 2 * (2 * 4 * TINY_N)  # the base matmul again, and its dX
    # QLoRA: each weight dequantized in forward and backward, n*(0.5 + 17/64 + 2) bytes (the
    # double-quantized absmax rebuilt in fp32 per pass: 1 read, 4 written, 4 + 4 for the offset,
    # 4 read by the dequantization), plus the fp32 <-> fp16 casts of the hidden stream,
    # T*(in + out)*(4 + 2); without double quantization the fp32 absmax is read as stored, 4/64
    per_pass = TINY_N * (0.5 + 17 / 64 + 2) + 4 * TINY_IN_OUT * 6
    assert qlora.terms["qlora/dequant"]["bytes"] == pytest.approx(2 * per_pass)
    single = timing.step_time(tiny, T4, TrainSpec(method="qlora", rank=2, seq_len=4, double_quant=False), "fp16")
    assert single.terms["qlora/dequant"]["bytes"] == pytest.approx(2 * (per_pass - TINY_N * 13 / 64))


def test_roofline_by_hand():
    """max(flops / (peak * e), bytes / (bandwidth * e_mem)); work of no stated size runs at the
    ceilings: T4 65 TFLOPS x 0.50 sustained, 320 GB/s; matmul 0.75, streaming 0.80."""
    assert R.seconds(1e12, 0, R.MATMUL, T4) == pytest.approx(1e12 / (65e12 * 0.50 * 0.75))
    assert R.seconds(0, 1e9, R.MEMORY, T4) == pytest.approx(1e9 / (320e9 * 0.80))
    assert R.seconds(1e12, 1e9, R.MATMUL, T4) == pytest.approx(1e12 / (65e12 * 0.50 * 0.75))  # compute binds
    with pytest.raises(ValueError):
        R.seconds(1, 1, "bogus", T4)


def test_seven_b_ratios_and_units():
    """Llama-2-7B, batch 1, seq 512: the methods order as measured runs order them, and the
    base matmuls are 6*N*T with N the Linear weights plus lm_head."""
    m = get_model("7b")
    st = {meth: timing.step_time(m, T4, TrainSpec(method=meth), "fp16") for meth in ("full", "lora", "qlora", "dora")}
    n = linear_weight_params(m) + m.vocab_size * m.hidden_size
    three = sum(flops(st["full"], k) for k in ("forward/matmul", "backward/input_grad", "backward/weight_grad"))
    assert three == 6 * n * 512
    assert st["lora"].step_seconds < st["qlora"].step_seconds and st["lora"].step_seconds < st["dora"].step_seconds
    for s in st.values():
        assert s.tokens_per_second == pytest.approx(512 / s.step_seconds)
        assert s.mfu == pytest.approx(s.model_flops / (s.step_seconds * 65e12))
        assert s.step_seconds == max(s.gpu_seconds, s.dispatch_seconds)


def test_moe_counts_the_active_experts_only():
    m = get_model("qwen3-30b-a3b")
    moe = m.layer.moe
    st = timing.step_time(m, H100, TrainSpec(method="lora", seq_len=8), "bf16")
    t, h, i = 8, m.hidden_size, moe.intermediate
    dense = sum(lin.in_features * lin.out_features for lin in m.layer.linears)
    per_layer = dense + h * moe.experts + moe.top_k * 3 * i * h
    assert flops(st, "forward/matmul") == 2 * t * (m.num_layers * per_layer + h * m.vocab_size)


def test_fp32_has_no_time_and_says_so():
    p = plan("7b", "a100-80gb", TrainSpec(method="lora", dtype="fp32"), {}, {})
    assert p.time is None and p.step_seconds is None
    assert "no time planned in fp32: the catalog holds 16-bit peaks only" in p.notes


def test_total_hours_by_hand():
    st = timing.step_time(get_model("7b"), T4, TrainSpec(method="lora"), "fp16")
    train = TrainSpec(method="lora")
    assert timing.total_hours(st, train, 1_000_000, 2) == pytest.approx(math.ceil(2_000_000 / 512) * st.step_seconds / 3600)
    with pytest.raises(ValueError, match="dataset tokens must be at least 1, got 0"):
        timing.total_hours(st, train, 0)
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        timing.total_hours(st, train, 10, 0)


FIELDS = ["device", "device_name", "status", "model", "method", "rank", "alpha", "target_modules", "batch_size",
          "seq_len", "gradient_checkpointing", "dtype", "precision", "optim", "quant_type", "double_quant",
          "step_time_s", "plan_gpu"]


def row(step, device="cuda", status="ok", gpu="h100-80gb", method="lora"):
    return dict(device=device, device_name="NVIDIA H100 80GB HBM3", status=status, model="qwen2.5-0.5b",
                method=method, rank=16, alpha=32, target_modules="all-linear", batch_size=1, seq_len=512,
                gradient_checkpointing="false", dtype="bf16", precision="autocast", optim="adamw_torch",
                quant_type="nf4", double_quant="true", step_time_s=step, plan_gpu=gpu)


def test_calibration_scales_the_factors_per_family(results_csv):
    train = TrainSpec(method="lora")
    planned = timing.step_time(get_model("qwen2.5-0.5b"), H100, train, "bf16").step_seconds
    path = results_csv(FIELDS, [
        row(2 * planned), row(2 * planned),  # measured twice as slow as planned
        row(planned / 10, device="cpu"), row(planned / 10, status="oom"),  # ignored: not comparable / failed
    ])
    cals = S.load(path)
    assert set(cals) == {"hopper"} and cals["hopper"].rows == 2
    assert cals["hopper"].factor == pytest.approx(0.5)
    calibrated = plan("qwen2.5-0.5b", "h100-80gb", train, {}, cals)
    assert calibrated.time.gpu_seconds == pytest.approx(2 * timing.step_time(
        get_model("qwen2.5-0.5b"), H100, train, "bf16").gpu_seconds)
    assert "time calibrated from 2 CUDA row(s) of the hopper family in data/probes: efficiency factors x 0.50" \
        in calibrated.notes
    other = plan("qwen2.5-0.5b", "t4", train, {}, cals)  # another family: the defaults
    assert not any("time calibrated" in n for n in other.notes)


def test_no_cuda_rows_says_so(results_csv):
    cals = S.load(results_csv(FIELDS, [row(1.0, device="cpu")]))
    assert cals == {}
    p = plan("7b", "t4", TrainSpec(method="lora"), {}, None)  # the committed table: CPU and fake rows only
    assert ("time planned with the default efficiency factors: data/probes has no CUDA rows of the "
            "turing family with a step time") in p.notes
    assert not any("efficiency factors" in n for n in plan("7b", "t4", TrainSpec(), {}, {}).notes)


def test_measured_speed_only_for_cuda_rows():
    mfu_row = row(0.5)
    planned_tps, mfu = S.measured_speed(mfu_row)
    st = timing.step_time(get_model("qwen2.5-0.5b"), H100, TrainSpec(method="lora"), "bf16")
    assert planned_tps == pytest.approx(st.tokens_per_second)
    assert mfu == pytest.approx(st.model_flops / (0.5 * 989e12))
    assert S.measured_speed(row(0.5, device="cpu")) is None
    assert S.measured_speed(row(0.5, gpu="no-such-gpu")) is None


def test_dispatch_by_hand(tiny):
    """Eager ops: per layer 40, + 8 per adapted Linear; forward, backward (2x), recompute;
    lm_head and loss 3 x 10; the optimizer 10. At 10 us each, a tiny model is dispatch-bound."""
    train = TrainSpec(method="lora", rank=2, seq_len=4)
    assert timing.dispatched_ops(tiny, train) == 2 * (40 + 7 * 8) * 3 + 30 + 10
    assert timing.dispatched_ops(tiny, train.with_(gradient_checkpointing=True)) == 2 * (40 + 7 * 8) * 4 + 40
    st = timing.step_time(tiny, H100, train, "bf16")
    assert st.bound == "dispatch" and st.step_seconds == pytest.approx((2 * 96 * 3 + 40) * 10e-6)


def test_a_saved_lm_head_adds_its_weight_gradient(tiny):
    """--modules-to-save lm_head: the frozen base still has no weight gradients, the trained
    lm_head copy has its 2*T*h*V."""
    st = timing.step_time(tiny, T4, TrainSpec(method="lora", rank=2, seq_len=4, modules_to_save=("lm_head",)), "fp16")
    assert flops(st, "backward/weight_grad") == 2 * 4 * TINY_HEAD
    plain = timing.step_time(tiny, T4, TrainSpec(method="lora", rank=2, seq_len=4), "fp16")
    assert flops(plain, "backward/weight_grad") == 0


def test_hours_with_several_gpus_take_each_gpus_batch(tiny):
    """Data parallelism: a step consumes num_gpus per-GPU batches."""
    one = TrainSpec(method="lora", rank=2, seq_len=4)
    st = timing.step_time(tiny, T4, one, "fp16")
    four = one.with_(num_gpus=4, sharding="ddp")
    assert timing.total_hours(st, one, 4000) == 1000 * st.step_seconds / 3600
    assert timing.total_hours(st, four, 4000) == 250 * st.step_seconds / 3600


def _two_kinds(tiny):
    """tiny with its second layer of another kind: an MLP 8->32->8 in place of 8->16->8
    (kinds that differ in their Linears, not only in their attention window)."""
    from dataclasses import replace
    from planner.model.architectures import Linear, LayerKind
    first = tiny.kinds[0]
    wide = tuple(Linear(l.name, l.in_features, 32, l.bias, l.role) if l.role in ("gate", "up") else
                 Linear(l.name, 32, l.out_features, l.bias, l.role) if l.role == "down" else l
                 for l in first.layer.linears)
    kinds = (LayerKind("decoder", first.layer, (0,)), LayerKind("decoder", replace(first.layer, linears=wide), (1,)))
    return replace(tiny, name="tiny-two-kinds", kinds=kinds)


def test_per_layer_terms_sum_over_kinds_that_differ_in_their_linears(tiny):
    """Layer 0's Linears sum(in*out) = 576, layer 1's (MLP 8->32->8) 64+32+32+64+256*3 = 960:
    the forward is 2*T*(576 + 960 + head), the adapters 6*T*r*(128 + 16+12+12+16+40*3), the
    dispatched ops and elementwise bytes of each layer its own. Negative control: the first
    kind read for every layer (576 twice) is not what is planned."""
    mixed = _two_kinds(tiny)
    train = TrainSpec(method="lora", rank=2, seq_len=4)
    st = timing.step_time(mixed, T4, train, "fp16")
    t = 4
    assert flops(st, "forward/matmul") == 2 * t * (576 + 960 + TINY_HEAD)
    assert flops(st, "forward/matmul") != 2 * t * (2 * 576 + TINY_HEAD)
    assert flops(st, "adapters/matmul") == 6 * t * 2 * (128 + 176)
    # the elementwise bytes grow with the wider MLP's activation (5*T*I per layer, I 16 -> 32)
    plain = timing.step_time(tiny, T4, train, "fp16")
    act = 5 * t * (32 - 16) * 2  # fp16 hidden stream under autocast: 2 bytes
    grown = st.terms["elementwise/layers"]["bytes"] - plain.terms["elementwise/layers"]["bytes"]
    assert grown == 3 * act  # forward once, backward twice
    assert timing.dispatched_ops(mixed, train) == timing.dispatched_ops(tiny, train)  # same op count per layer


def test_kinds_alike_but_for_their_window_share_one_view():
    """Gemma-2's sliding and full layers differ only in the window: one view of every layer
    (the catalog plans stay as they were); tiny with a wider MLP in layer 1 gets two."""
    g = get_model("gemma-2-2b")
    assert timing.layer_views(g) == (g,)


def test_a_target_one_kind_lacks_adapts_nothing_there(tiny):
    """Layer 1 names its query projection otherwise: --target-modules q_proj adapts layer 0's
    q_proj only (6*T*r*(8 + 8) in one layer), not twice, and raises nothing."""
    from dataclasses import replace
    from planner.model.architectures import Linear, LayerKind
    first = tiny.kinds[0]
    renamed = tuple(Linear("x_proj", l.in_features, l.out_features, l.bias, l.role) if l.name == "q_proj" else l
                    for l in first.layer.linears)
    kinds = (LayerKind("decoder", first.layer, (0,)), LayerKind("decoder", replace(first.layer, linears=renamed), (1,)))
    mixed = replace(tiny, name="tiny-renamed", kinds=kinds)
    from planner.memory.terms import precision
    train = TrainSpec(method="lora", rank=2, seq_len=4, target_modules=("q_proj",))
    work = timing.adapter_work(mixed, train, precision(train, "fp16"))
    assert sum(w.flops for w in work if w.term == "adapters/matmul") == 6 * 4 * 2 * (8 + 8)
    # ops: 40 per layer, 8 for the one adapted Linear, three passes; lm_head and loss 30, optimizer 10
    assert timing.dispatched_ops(mixed, train) == (2 * 40 + 8) * 3 + 40


def test_mamba2_and_short_conv_mixers_are_timed_on_each_kernel_path():
    """granite-4.0-h-tiny: 36 Mamba-2 layers (4 of its 40 attend), H 48 heads of P 64, N 128,
    G 1 group, conv over D = 2*48*64 + 2*1*128 = 3328 channels with K 4 taps, chunk Q 256.
    Per layer forward, T tokens: 2*T*D*K (conv) + 2*T*Q*N per score head (C B^T: one group
    on the fused path, every head on the torch path) + T*H*(2*Q*P + 4*N*P) (scores times x,
    chunk states, output states); backward twice. lfm2-1.2b: 10 short-conv layers of h 2048,
    K 3: T*h*(2*K + 2) forward, twice backward. The torch path moves more bytes; a model
    without such mixers has no mixer/core term."""
    t = 512
    train = TrainSpec(method="lora", seq_len=t, gradient_checkpointing=False)
    a100 = get_gpu("a100-80gb")
    granite = get_model("granite-4.0-h-tiny")
    rest = t * 48 * (2 * 256 * 64 + 4 * 128 * 64)
    fused_fwd = 2 * t * 3328 * 4 + 2 * t * 256 * 128 * 1 + rest
    torch_fwd = 2 * t * 3328 * 4 + 2 * t * 256 * 128 * 48 + rest
    fused = timing.step_time(granite, a100, train.with_(kernels="fused"), "bf16")
    torch_path = timing.step_time(granite, a100, train.with_(kernels="torch"), "bf16")
    assert flops(fused, "mixer/core") == 3 * 36 * fused_fwd
    assert flops(torch_path, "mixer/core") == 3 * 36 * torch_fwd
    assert torch_path.terms["mixer/core"]["bytes"] > fused.terms["mixer/core"]["bytes"]
    # fused bytes: in_proj output (2*3072 + 2*128 + 48 = 6448) read, scan output (3072) written, bf16
    assert fused.terms["mixer/core"]["bytes"] == 3 * 36 * t * (6448 + 3072) * 2
    # the term is part of the step: the step without it is shorter
    assert fused.step_seconds > fused.step_seconds - fused.terms["mixer/core"]["seconds"] > 0
    # checkpointing recomputes the mixer's forward
    ckpt = timing.step_time(granite, a100, train.with_(kernels="fused", gradient_checkpointing=True), "bf16")
    assert flops(ckpt, "recompute/forward") - flops(fused, "recompute/forward") >= 36 * fused_fwd

    lfm2 = get_model("lfm2-1.2b")
    conv_fused = timing.step_time(lfm2, a100, train.with_(kernels="fused"), "bf16")
    conv_torch = timing.step_time(lfm2, a100, train.with_(kernels="torch"), "bf16")
    assert flops(conv_fused, "mixer/core") == flops(conv_torch, "mixer/core") == 3 * 10 * t * 2048 * (2 * 3 + 2)
    # the torch conv writes its K - 1 padding positions: 3 passes * 10 layers * b*h*(K - 1)*c
    assert conv_torch.terms["mixer/core"]["bytes"] - conv_fused.terms["mixer/core"]["bytes"] == 3 * 10 * 2048 * 2 * 2

    for plain in (get_model("llama-3.1-8b"), get_model("qwen3-next-80b-a3b")):  # attention, DeltaNet
        assert "mixer/core" not in timing.step_time(plain, a100, train, "bf16").terms


def test_every_term_of_the_step_is_listed():
    """The terms a plan lists sum to the step's GPU seconds: a term the list leaves out (the
    DeltaNet's, a Mamba-2's) would be timed but not shown. Qwen3-Next (DeltaNet) and
    granite-4.0-h-tiny (Mamba-2), with checkpointing."""
    train = TrainSpec(method="lora", seq_len=512, gradient_checkpointing=True)
    for name in ("qwen3-next-80b-a3b", "granite-4.0-h-tiny", "llama-3.1-8b"):
        st = timing.step_time(get_model(name), get_gpu("a100-80gb"), train, "bf16")
        assert sum(e["seconds"] for e in st.terms.values()) == pytest.approx(st.gpu_seconds, rel=1e-12)
    assert "deltanet/core" in timing.step_time(get_model("qwen3-next-80b-a3b"), get_gpu("a100-80gb"), train,
                                               "bf16").terms


def test_a_probe_row_is_replanned_with_every_setting_it_names():
    """A results row (every cell text, as probes.store writes it) comes back as the TrainSpec
    it ran: the settings the first schema lacked (dropout, attention, sharding, GPUs, kernels)
    included; an older row's missing or empty cells are
    the defaults. Negative control: the two rows, differing in those cells only, plan different
    step times."""
    from planner import TrainSpec

    row = {"model": "qwen2.5-0.5b", "method": "lora", "rank": "8", "alpha": "16.0", "target_modules": "q_proj,v_proj",
           "batch_size": "4", "seq_len": "1024", "gradient_checkpointing": "true", "dtype": "bf16",
           "precision": "autocast", "optim": "adamw_torch_fused", "quant_type": "nf4", "double_quant": "false",
           "target_parameters": "", "lora_dropout": "0.1", "attn_implementation": "eager",
           "modules_to_save": "", "num_gpus": "2", "sharding": "fsdp", "kernels": "torch",
           "plan_gpu": "a100-80gb", "status": "ok"}
    assert S._train(row) == TrainSpec(method="lora", rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"),
                                      batch_size=4, seq_len=1024, gradient_checkpointing=True, dtype="bf16",
                                      optim="adamw_torch_fused", double_quant=False, lora_dropout=0.1,
                                      attn_implementation="eager", num_gpus=2,
                                      sharding="fsdp", kernels="torch")
    old = {k: v for k, v in row.items() if k not in ("lora_dropout", "attn_implementation", "modules_to_save",
                                                     "num_gpus", "sharding", "kernels")}
    old["target_parameters"] = ""
    assert S._train(old) == TrainSpec(method="lora", rank=8, alpha=16.0, target_modules=("q_proj", "v_proj"),
                                      batch_size=4, seq_len=1024, gradient_checkpointing=True, dtype="bf16",
                                      optim="adamw_torch_fused", double_quant=False)
    assert S.planned_step(row)[1].step_seconds != S.planned_step(old)[1].step_seconds
