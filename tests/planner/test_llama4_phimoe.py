"""Llama 4 (llama4_text) and Phi-3.5-MoE (phimoe) in the architecture table: layer kinds, what
all-linear and QLoRA reach (checked against peft 0.21 and bitsandbytes with the tracer), and
the terms new with them, against the tensors saved-tensor hooks found on transformers 5.23's
modules (h 64, I 96, 4 experts, top-1, 40 tokens)."""
import pytest

from planner import TrainSpec, plan
from planner.memory import terms as C
from planner.model import counts, targets
from planner.model.catalog import CatalogError, model_from_config

LLAMA4 = dict(model_type="llama4_text", vocab_size=512, hidden_size=64, intermediate_size=96, intermediate_size_mlp=160,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
              num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=8192)
PHIMOE = dict(model_type="phimoe", vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
              attention_bias=True, lm_head_bias=True, input_jitter_noise=0.01)


def _spec(fields, **changes):
    return model_from_config({**fields, **changes}, f"tiny-{fields['model_type']}")


def _train(**kw):
    return TrainSpec(**{"method": "lora", "rank": 8, "batch_size": 1, "seq_len": 40, "dtype": "bf16", **kw})


def test_llama4_kinds_attention_by_rope_mlp_by_interleave():
    """Maverick's pattern: MoE on odd layers (interleave 2), no RoPE on every 4th; the kinds are
    named attention/mlp where both MLP kinds occur, by attention alone where every layer is MoE."""
    m = _spec(LLAMA4)
    assert [(k.name, k.indices) for k in m.kinds] == [("chunked_attention/dense", (0, 2)),
                                                       ("chunked_attention/moe", (1,)), ("full_attention/moe", (3,))]
    dense, chunked, full = (k.layer for k in m.kinds)
    assert dense.moe is None and [(lin.name, lin.out_features) for lin in dense.linears[4:]] == [
        ("gate_proj", 160), ("up_proj", 160), ("down_proj", 64)]
    assert [lin.name for lin in chunked.linears[4:]] == ["shared_expert.gate_proj", "shared_expert.up_proj",
                                                          "shared_expert.down_proj"]
    assert chunked.moe.dispatch == "dense" and chunked.moe.shared_intermediate == 96
    assert (chunked.traits.rope, chunked.traits.qk_l2_norm, chunked.traits.sliding_window) == ("complex", True, 8192)
    assert (full.traits.rope, full.traits.attn_temperature, full.traits.sliding_window) == ("none", True, None)
    scout = _spec(LLAMA4, interleave_moe_layer_step=1, use_qk_norm=False)
    assert [k.name for k in scout.kinds] == ["chunked_attention", "full_attention"]
    assert not scout.kinds[0].layer.traits.qk_l2_norm
    # the dense layers' width is named when missing
    fields = {k: v for k, v in LLAMA4.items() if k != "intermediate_size_mlp"}
    with pytest.raises(CatalogError, match="intermediate_size_mlp"):
        _spec(fields)


def test_llama4_all_linear_adapts_attention_shared_expert_and_dense_mlp_not_experts():
    """peft 0.21 with the router left out (tracer): LoRA on q/k/v/o everywhere, the shared
    expert's Linears in MoE layers, the dense MLP's in dense layers; experts frozen."""
    m, t = _spec(LLAMA4), _train()
    assert targets.targeted_parameters(m, t) == ()
    attention = 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64))  # r*(in + out): q, k, v, o
    dense = 8 * (2 * (64 + 160) + (160 + 64))
    shared = 8 * (2 * (64 + 96) + (96 + 64))
    assert counts.adapter_params(m, t) == 4 * attention + 2 * dense + 2 * shared
    # a module name of the MoE layers only is known (every kind's names are checked)
    assert targets.targeted_linears(m.kind_view(1), ("shared_expert.down_proj",))
    targets.check_rank(m, TrainSpec(target_modules=("shared_expert.down_proj",), rank=8))
    with pytest.raises(ValueError, match="larger than"):
        targets.check_rank(m, TrainSpec(target_modules=("shared_expert.down_proj",), rank=80))


def test_dense_dispatch_saved_tensors():
    """Llama4TextMoe keeps, bf16 frozen: top-k indices (40, 1) int64, the fp32 sigmoid (40, 4), the
    score column (160, 1), the repeated input (160, 64), gate_up (4, 40, 192), act (4, 40, 96); fp32
    under bf16 autocast (QLoRA) the repeated input in fp32 and bf16 copies of the experts and
    router weights (4, 64, 192), (4, 96, 64), (64, 4)."""
    m = _spec(LLAMA4).kind_view(1)
    t = _train()
    parts = C.moe_saved_parts(m, t, C.precision(t, "bf16"))
    assert (parts["router"], parts["experts"], parts["weight_copies"]) == (320 + 640, 320 + 20480 + 61440 + 30720, 0)
    q = _train(method="qlora")
    parts = C.moe_saved_parts(m, q, C.precision(q, "bf16"))
    assert (parts["experts"], parts["weight_copies"]) == (320 + 40960 + 61440 + 30720, 98304 + 49152 + 512)
    # negative control: the grouped path keeps T*k pairs, not E*T rows
    grouped = C.moe_saved_parts(_spec(PHIMOE, input_jitter_noise=0.0), t, C.precision(t, "bf16"))
    assert grouped["experts"] < parts["experts"] / 2


def test_llama4_qk_l2_norm_and_temperature():
    """Llama4TextL2Norm keeps fp32 q (1, 40, 4, 16) and k (1, 40, 2, 16) and their rsqrt per head; the
    no-RoPE layers' temperature keeps one fp32 scale per position; neither elsewhere."""
    m, t = _spec(LLAMA4), _train()
    p = C.precision(t, "bf16")
    assert C.qk_l2_norm_saved(m.kind_view(1), t, p) == 10240 + 640 + 5120 + 320
    assert C.qk_l2_norm_saved(m.kind_view(3), t, p) == 0 and C.attn_temperature_saved(m.kind_view(3), t, p) == 160
    assert C.attn_temperature_saved(m.kind_view(1), t, p) == 0
    assert C.rope_saved(m, t, p) == 40 * 16 * 4  # one complex64 (1, 40, 8) table


def test_phimoe_layout_biases_and_jitter():
    """LayerNorm with bias (two a layer and the final one), q/k/v/o biases, lm_head's bias; the input
    jitter keeps two noise tensors a layer (fp32 under autocast: LayerNorm's output)."""
    m = _spec(PHIMOE)
    assert all(n.bias for n in m.layer.norms) and all(lin.bias for lin in m.linears)
    per_layer = 2 * 2 * 64 + (64 * 64 + 64) * 2 + (64 * 32 + 32) * 2 + 4 * 64 + 4 * 3 * 96 * 64
    assert counts.total_params(m) == 512 * 64 + 2 * per_layer + 2 * 64 + 512 * 64 + 512
    assert counts.total_params(_spec(PHIMOE, lm_head_bias=False)) == counts.total_params(m) - 512
    t = _train()
    p = C.precision(t, "bf16")
    jitter = C.moe_saved_parts(m, t, p)["router"] - C.moe_saved_parts(_spec(PHIMOE, input_jitter_noise=0.0), t, p)["router"]
    assert jitter == 2 * 40 * 64 * 4


@pytest.mark.parametrize("fields", [LLAMA4, PHIMOE])
def test_notes_say_experts_stay_16_bit_and_router_left_out(fields):
    m = _spec(fields)
    notes = plan(m, "h100", _train(method="qlora")).notes
    assert any("stay unquantized" in n for n in notes)
    assert any("left out" in n and "tuple" in n for n in notes)
    routing = next(n for n in notes if n.startswith("mixture of experts"))
    assert ("every expert runs on every token" in routing) == (fields is LLAMA4)
    assert ("balanced routing assumed" in routing) == (fields is PHIMOE)
    # named targets: no router note
    explicit = plan(m, "h100", _train(method="qlora", target_modules=("q_proj", "v_proj"))).notes
    assert not any("left out" in n and "tuple" in n for n in explicit)
