"""GLM-4.5 (glm4_moe) and DeepSeek-V3 (deepseek_v3) in the architecture table: dense first
layers beside the mixture-of-experts layers (two kinds whose Linears differ), DeepSeek-V3's
sigmoid router and shared experts, multi-head latent attention; what peft 0.21's all-linear
and bitsandbytes' QLoRA reach (each checked with the tracer on tiny configs), every count and
saved set against hand sums."""
import pytest

from planner import plan
from planner.memory import terms as C
from planner.model import counts
from planner.model import inventory as inv
from planner.model import targets
from tiny_layouts import spec, train

MOE = dict(moe_intermediate_size=48, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
           first_k_dense_replace=1, n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5)
GLM = dict(MOE, attention_bias=True, partial_rotary_factor=0.5)
MLA = dict(MOE, num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
           v_head_dim=16, head_dim=None)


def test_glm45_first_layers_are_dense_and_the_others_moe():
    m = spec("glm4_moe", **GLM)
    assert [(k.name, k.indices) for k in m.kinds] == [("dense", (0,)), ("moe", (1,))]
    dense, moe = (k.layer for k in m.kinds)
    assert [lin.name for lin in dense.linears[4:]] == ["gate_proj", "up_proj", "down_proj"]
    assert dense.moe is None and dense.linears[4].out_features == 320
    assert [(lin.name, lin.role, lin.out_features) for lin in moe.linears[4:]] == [
        ("shared_experts.gate_proj", "shared_gate", 48), ("shared_experts.up_proj", "shared_up", 48),
        ("shared_experts.down_proj", "shared_down", 128)]
    assert moe.moe.routing == "sigmoid_group" and (moe.moe.groups, moe.moe.topk_groups) == (2, 1)
    # q/k/v biases, none on o_proj; first_k_dense_replace 0: every layer MoE
    assert [lin.bias for lin in moe.linears[:4]] == [True, True, True, False]
    assert [k.name for k in spec("glm4_moe", **dict(GLM, first_k_dense_replace=0)).kinds] == ["moe"]
    # GLM-4.5's use_qk_norm: per-head q / k norms
    assert [n.name for n in spec("glm4_moe", **GLM, use_qk_norm=True).layer.norms_at("q", "k")] == ["q_norm", "k_norm"]


def test_hand_count_of_a_dense_and_a_moe_layer():
    m = spec("glm4_moe", **GLM)
    q, kv = 128 * 96, 128 * 48
    attention = q + 2 * kv + q + 96 + 2 * 48 + 2 * 128  # q k v o, q/k/v biases, two norms
    dense = attention + 3 * 128 * 320
    moe = attention + 3 * 128 * 48 + 8 * 128 + 8 * 3 * 48 * 128  # shared expert, router, experts
    assert counts.total_params(m) == 2 * 512 * 128 + 128 + dense + moe


def test_all_linear_drops_every_mlp_linear_and_adapts_router_and_experts():
    """peft 0.21 maps glm4_moe and deepseek_v3 to the "qwen2_moe" conversion pattern: all-linear's
    gate_proj / up_proj / down_proj become the fused experts' target_parameters and leave
    target_modules, so neither the dense layer's MLP nor the shared experts keep a LoRA (traced:
    LoRA on q, k, v, o, the router at r, gate_up at 2r, down at r)."""
    m, t = spec("glm4_moe", **GLM), train()
    dense, moe = m.by_kind()
    assert targets.targeted_names(dense, t) == targets.targeted_names(moe, t) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert [(p.part, p.rank) for p in targets.targeted_parameters(moe, t)] == [("router", 8), ("gate_up", 16), ("down", 8)]
    assert targets.targeted_parameters(dense, t) == ()
    attention = 8 * (2 * (128 + 96) + 2 * (128 + 48))  # q, o and k, v, per layer
    experts = 8 * (128 + 8) + 8 * 16 * (128 + 96) + 8 * 8 * (48 + 128)
    assert counts.adapter_params(m, t) == 2 * attention + experts
    # negative control: a family peft does not convert (Qwen2-MoE) keeps its shared expert's LoRA
    q2 = spec("qwen2_moe", moe_intermediate_size=48, shared_expert_intermediate_size=64, num_experts=8,
              num_experts_per_tok=2)
    assert "shared_expert.gate_proj" in targets.targeted_names(q2, t)


def test_qlora_packs_the_mlp_linears_and_keeps_experts_and_router_fp32():
    m, q = spec("glm4_moe", **GLM), train(method="qlora")
    tensors = inv.inventory(m, q, 2)
    packed = {t.path for t in tensors if t.treatment == "4bit"}
    assert "layers.*.gate_proj.weight" in packed and "layers.*.shared_experts.down_proj.weight" in packed
    fp32 = {t.path: t.dtype_bytes for t in tensors if t.role in ("router", "experts")}
    assert set(fp32.values()) == {4} and len(fp32) == 3
    notes = plan(m, "h100", q).notes
    assert any("stay unquantized" in n and "fp32" in n for n in notes)
    assert any("no adapter on the dense layers' MLP or the shared experts" in n for n in notes)


def test_sigmoid_router_saved_set():
    """DeepSeek-V3's router under autocast (r = c bytes): sigmoid T*E*r, top-k indices T*k*8,
    renormalized weights and their sum T*k*r + T*r, the weight's copy E*h*r (its LoRA's merged
    weight instead when adapted), its input's copy T*h*r when it trains."""
    m = spec("glm4_moe", **GLM).by_kind()[1]
    t = train(target_modules=("q_proj",))  # router frozen
    p = C.precision(t, "bf16")
    saved, w = C.sigmoid_router_saved(m, t, p, trained=False)
    assert (saved, w) == (8 * 128 * 2 + 40 * 8 * 2 + 80 * 8 + (80 + 40) * 2, 2)
    lora = train()
    assert C.sigmoid_router_saved(m, lora, p, trained=True)[0] == saved - 8 * 128 * 2 + 40 * 128 * 2
    pure = train(precision="pure", target_modules=("q_proj",))
    assert C.sigmoid_router_saved(m, pure, C.precision(pure, "bf16"), trained=False) == (2 * saved - 80 * 8, 4)


def test_deepseek_v3_latent_attention_layout():
    m = spec("deepseek_v3", **MLA)
    assert [(lin.name, lin.role, lin.in_features, lin.out_features) for lin in m.linears[:5]] == [
        ("q_a_proj", "q_a", 128, 48), ("q_b_proj", "q_b", 48, 4 * 24), ("kv_a_proj_with_mqa", "kv_a", 128, 40),
        ("kv_b_proj", "kv_b", 32, 4 * 32), ("o_proj", "o", 4 * 16, 128)]
    assert [(n.name, n.site, n.size) for n in m.layer.norms_at("q_a", "kv_a")] == [
        ("q_a_layernorm", "q_a", 48), ("kv_a_layernorm", "kv_a", 32)]
    assert m.head_dim == 8  # qk_rope_head_dim: RoPE's tables
    no_q_latent = spec("deepseek_v3", **dict(MLA, q_lora_rank=None))
    assert [(lin.name, lin.role) for lin in no_q_latent.linears[:2]] == [("q_proj", "q"), ("kv_a_proj_with_mqa", "kv_a")]
    assert [n.site for n in no_q_latent.layer.norms_at("q_a", "kv_a")] == ["kv_a"]


def test_deepseek_v3_all_linear_adapts_every_attention_projection():
    m, t = spec("deepseek_v3", **MLA), train()
    assert targets.targeted_names(m.by_kind()[1], t) == {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                                         "o_proj"}


def test_mla_attention_saved_set():
    """q and k (192-wide heads at real widths, here 24), the whole kv_b output v keeps, the output
    (v-wide heads) and the memory-efficient kernel's logsumexp padded to 32 positions."""
    m, t = spec("deepseek_v3", **MLA), train()
    p = C.precision(t, "bf16")
    lse = 1 * 4 * 64 * 4  # seq 40 -> 64
    assert C.attention_core_saved(m, t, p) == 40 * 4 * (2 * 24 + (16 + 16) + 16) * 2 + lse
    q = train(method="qlora")  # fp32 Linear outputs: the kernel keeps autocast's copy of v only
    assert C.attention_core_saved(m, q, C.precision(q, "bf16")) == 40 * 4 * (2 * 24 + 16 + 16) * 2 + lse
    with pytest.raises(ValueError, match="eager"):
        C.attention_core_saved(m, train(attn_implementation="eager"), p)


def test_latent_norms_are_saved_per_token():
    m, t = spec("deepseek_v3", **MLA), train()
    p = C.precision(t, "bf16")
    q_a, kv_a = m.layer.norms_at("q_a", "kv_a")
    assert C.norm_saved(m, t, p, q_a) == 40 * 48 * 4 + 40 * 4
    assert C.norm_saved(m, t, p, kv_a) == 40 * 32 * 4 + 40 * 4
    q = train(method="qlora")  # the fp32 latent is a slice of kv_a's output: the whole output stays
    assert C.norm_saved(m, q, C.precision(q, "bf16"), kv_a) == 40 * 40 * 4 + 40 * 4


def test_per_kind_sums_read_each_kind():
    """The autocast copies read every kind, not the first: the MoE kind's fused parameters' LoRA
    factors are no autocast copies, though the first (dense) kind has none."""
    m, t = spec("glm4_moe", **GLM), train()
    p = C.precision(t, "bf16")
    experts = sum(tg.params for tg in targets.targeted_parameters(m.by_kind()[1], t))
    assert C.autocast_weight_copies(m, t, p) == (counts.adapter_params(m, t) - experts
                                                 - C.first_layer_uncopied(m, t, p)) * 2
    assert experts and targets.targeted_parameters(m.by_kind()[0], t) == ()  # the dense kind has none


@pytest.mark.parametrize("field", ["n_group", "kv_lora_rank"])
def test_missing_fields_are_named(field):
    from planner.model.catalog import CatalogError

    fields = dict(MLA)
    fields.pop(field)
    arch = "deepseek_v3"
    if field == "n_group":
        fields["n_group"] = None
    with pytest.raises((CatalogError, ValueError), match=field):
        spec(arch, **fields)


def test_mlp_module_names_are_converted_as_peft_converts_them():
    """Named MLP modules on a converting family become fused parameters (peft's conversion):
    gate_proj with up_proj gives gate_up at 2r, down_proj down at r, no Linear keeps a LoRA;
    gate_proj without up_proj is refused, as peft refuses it (traced counts: GLM-4.5-Air's
    "mlp" target set equals peft's on a meta model, tests/validate/test_planner_counts.py)."""
    from planner.model.targets import UnsupportedMethod

    moe = spec("glm4_moe", **GLM).by_kind()[1]
    t = train(target_modules=("gate_proj", "up_proj", "down_proj"))
    assert [(p.part, p.rank) for p in targets.targeted_parameters(moe, t)] == [("gate_up", 16), ("down", 8)]
    assert targets.targeted_names(moe, t) == frozenset()
    both = train(target_modules=("gate_proj", "up_proj"), target_parameters=("experts.gate_up_proj",))
    assert [(p.part, p.rank) for p in targets.targeted_parameters(moe, both)] == [("gate_up", 16)]
    with pytest.raises(UnsupportedMethod, match="without up_proj"):
        targets.targeted_parameters(moe, train(target_modules=("q_proj", "gate_proj")))


def test_checkpointed_experts_forward_holds_the_merged_weights():
    """With checkpointing the MoE layer keeps nothing, but its forward still builds the merged
    expert weights: a forward moment of their bytes, four S x h and two T x h tensors and the
    sort's int64 vectors (S = T*k pairs); none without checkpointing or without LoRA on experts."""
    moe = spec("glm4_moe", **GLM).by_kind()[1]
    t = train(gradient_checkpointing=True)
    p = C.precision(t, "bf16")
    merged = C.moe_saved_parts(moe, t, p)["merged"]
    assert merged and C.moe_forward_workspace(moe, t, p) == merged + (4 * 80 + 2 * 40) * 128 * 2 + 24 * 80
    assert C.moe_forward_workspace(moe, train(), p) == 0
    assert C.moe_forward_workspace(moe, train(gradient_checkpointing=True, target_modules=("q_proj",)), p) == 0
    from planner.memory.moments import step_memory

    step = step_memory(spec("glm4_moe", **GLM), t, "bf16")
    assert step.moments["forward"] == "layer_experts"  # (at seq 40 the merged weights outweigh the logits)


def test_kimi_k2_config_plans_as_deepseek_v3():
    """Kimi-K2's config.json says model_type "kimi_k2" (remote code, never run); its layout is
    DeepSeek-V3's, which the catalog entry and a Hub config both plan (negative control: an
    unknown model type is still refused)."""
    from planner import get_model
    from planner.model.catalog import UnknownArchitecture, model_from_config

    cfg = dict(get_model("kimi-k2").hf_config(), model_type="kimi_k2")
    m = model_from_config(cfg, "kimi")
    assert m.model_type == "deepseek_v3" and m.hf_config()["model_type"] == "deepseek_v3"
    assert counts.total_params(m) == counts.total_params(get_model("kimi-k2"))
    with pytest.raises(UnknownArchitecture):
        model_from_config(dict(cfg, model_type="kimi_k9"), "unknown")


def test_offload_advice_says_it_needs_checkpointing_too():
    """DeepSeek-V3 LoRA on 8 H200s under FSDP: the merged expert weights every layer keeps rule
    out any fit without checkpointing, so the offload advice (planned with checkpointing) says so."""
    from planner import TrainSpec, get_gpu, get_model
    from planner.fit import recommend

    model, gpu = get_model("deepseek-v3"), get_gpu("h200")
    t = TrainSpec(method="lora", num_gpus=8, sharding="fsdp", dtype="bf16")
    text = recommend(model, gpu, t, [plan(model, gpu, t)]).text
    assert "With --offload params and checkpointing lora fits" in text
