"""The mixture-of-experts families of issue 18 in the architecture table: layouts, what
all-linear and QLoRA reach (each checked against peft 0.21 and bitsandbytes with the tracer),
the shared-expert terms."""
import pytest

from planner import plan
from planner.memory import terms as C
from planner.model import counts
from planner.model import targets
from tiny_layouts import layout, spec, train

QWEN2_MOE = dict(moe_intermediate_size=48, shared_expert_intermediate_size=64, num_experts=8, num_experts_per_tok=2)


def test_qwen2_moe_shared_expert_is_linear_modules():
    """Qwen2MoeSparseMoeBlock: shared_expert (a gated MLP of Linears) and shared_expert_gate (h -> 1)
    beside the fused experts; q/k/v biases (qkv_bias, default True)."""
    m = spec("qwen2_moe", **QWEN2_MOE)
    assert layout(m)[4:] == [("shared_expert.gate_proj", "shared_gate", 128, 64, False),
                             ("shared_expert.up_proj", "shared_up", 128, 64, False),
                             ("shared_expert.down_proj", "shared_down", 64, 128, False),
                             ("shared_expert_gate", "shared_scale", 128, 1, False)]
    assert layout(m)[0][4] and not spec("qwen2_moe", qkv_bias=False, **QWEN2_MOE).linears[0].bias
    q, kv = 128 * 96, 128 * 48
    per_layer = q + 2 * kv + q + 96 + 2 * 48 + 2 * 128 + 3 * 128 * 64 + 128 + 8 * 128 + 8 * 3 * 48 * 128
    assert counts.total_params(m) == 2 * 512 * 128 + 128 + 2 * per_layer


def test_qwen2_moe_all_linear_adapts_the_shared_expert_not_the_routed_ones():
    """peft 0.21 rewrites all-linear to the fused experts only for model types transformers maps
    to the "qwen2_moe" conversion pattern, which qwen2_moe itself is not (traced: LoRA on the
    attention, the shared expert and its gate; router and experts frozen). The gate's single
    output is no reason to refuse a rank (peft adapts it with lora_B (1, r))."""
    m, t = spec("qwen2_moe", **QWEN2_MOE), train()
    assert targets.targeted_parameters(m, t) == ()
    assert targets.targeted_names(m, t) == frozenset(m.linear_names)
    targets.check_rank(m, t)
    # peft's suffix match: "gate_proj" reaches the shared expert's
    assert [lin.name for lin in targets.targeted_linears(m, ("gate_proj",))] == ["shared_expert.gate_proj"]
    assert counts.adapter_params(m, t) == 2 * 8 * sum(lin.in_features + lin.out_features for lin in m.linears)


def test_qwen2_moe_shared_expert_saved_and_its_gate():
    """The shared expert keeps 3*T*I_s (gate, up, act(gate)); the sigmoid gate's product keeps the
    shared output and the sigmoid, T*(h + 1); both in the hidden dtype (fp32 under QLoRA)."""
    m, t = spec("qwen2_moe", **QWEN2_MOE), train()
    p = C.precision(t, "bf16")
    assert C.shared_expert_saved(m, t, p) == 3 * 40 * 64 * 2
    assert C.shared_output_saved(m, t, p) == 40 * 129 * 2
    names = [n for n, _ in C.layer_saved_sequence(m, t, p)]
    assert names.index("shared_expert") < names.index("mlp") < names.index("shared_output")
    q = train(method="qlora")
    assert C.shared_output_saved(m, q, C.precision(q, "bf16")) == 40 * 129 * 4
    assert C.shared_expert_saved(spec("qwen3_moe", **QWEN2_MOE), t, p) == 0


def test_qwen2_moe_qlora_packs_the_shared_expert_and_says_so():
    m = spec("qwen2_moe", **QWEN2_MOE)
    notes = plan(m, "h100", train(method="qlora")).notes
    assert any("stay unquantized" in n for n in notes)
    assert any("shared expert" in n and "4 bits" in n for n in notes)


def test_qwen2_moe_missing_shared_width_is_named():
    from planner.model.catalog import CatalogError

    fields = {k: v for k, v in QWEN2_MOE.items() if k != "shared_expert_intermediate_size"}
    with pytest.raises((CatalogError, ValueError), match="shared_expert_intermediate_size"):
        spec("qwen2_moe", **fields)


OLMOE = dict(intermediate_size=48, num_experts=8, num_experts_per_tok=2)


def test_olmoe_is_qwen3_moe_with_a_whole_projection_qk_norm():
    """OLMoE: q_norm over q_dim, k_norm over kv_dim (OlmoeAttention), experts intermediate_size
    wide; peft's all-linear adapts the router (r) and the fused experts (gate_up 2r, down r), as
    for Qwen3-MoE (transformers maps olmoe to the "qwen2_moe" conversion pattern; traced)."""
    m = spec("olmoe", **OLMOE)
    assert [(n.name, n.site, n.size) for n in m.layer.norms_at("q", "k")] == [("q_norm", "q", 96), ("k_norm", "k", 48)]
    assert m.layer.moe.intermediate == 48 and m.linear_names == ("q_proj", "k_proj", "v_proj", "o_proj")
    parts = [(p.part, p.rank) for p in targets.targeted_parameters(m, train())]
    assert parts == [("router", 8), ("gate_up", 16), ("down", 8)]


def test_fp32_experts_make_no_factor_copies():
    """LoRA on a fused expert weight copies its fp32 factors to the weight's dtype; under QLoRA
    the experts are fp32 (prepare_model_for_kbit_training), the copy is the factor itself: the
    merged part is the merged weights alone (tracer, OLMoE-1B-7B 2 layers)."""
    m = spec("olmoe", **OLMOE)
    q = train(method="qlora")
    merged = C.moe_saved_parts(m, q, C.precision(q, "bf16"))["merged"]
    assert merged == 4 * (128 * 8 + 8 * 128 * 96 + 8 * 48 * 128)
    lora = train()
    copies = 8 * (128 + 8) + 8 * 16 * (128 + 96) + 8 * 8 * (48 + 128)
    assert C.moe_saved_parts(m, lora, C.precision(lora, "bf16"))["merged"] == 2 * (
        8 * 128 + 8 * 128 * 96 + 8 * 48 * 128 + copies)
