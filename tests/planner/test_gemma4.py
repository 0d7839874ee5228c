"""Gemma 4's text decoder (transformers 5.23 modeling_gemma4 / configuration_gemma4): layer kinds
with their own widths, KV-shared layers, per-layer inputs, and its bad configs refused in one line.

Counts here are hand counts from the config; the tracer checks the layout against a real step
(tests/probes/test_dense_families_traced.py) and the catalog sizes against transformers' own count
(tests/planner/test_counts.py)."""
import json

import pytest
from click.testing import CliRunner

from planner import TrainSpec
from planner.cli.command import main as plan_main
from planner.model import counts, inventory as inv
from planner.model.catalog import CatalogError, model_from_config

TINY = dict(model_type="gemma4_text", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
            num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=32, num_kv_shared_layers=2,
            use_double_wide_mlp=True, layer_types=["sliding_attention", "full_attention"] * 2,
            hidden_size_per_layer_input=8, vocab_size_per_layer_input=512)


def test_kinds_carry_their_own_widths():
    spec = model_from_config(TINY, "g4")
    kinds = {k.name: k for k in spec.kinds}
    assert {n: k.indices for n, k in kinds.items()} == {
        "sliding_attention": (0,), "full_attention": (1,), "shared_kv_sliding_attention": (2,),
        "shared_kv_full_attention": (3,)}
    views = {v.kinds[0].name: v for v in spec.by_kind()}
    full, shared_full = views["full_attention"], views["shared_kv_full_attention"]
    assert (full.head_dim, full.num_kv_heads, full.q_dim, full.kv_dim, full.intermediate_size) == (32, 1, 128, 32, 160)
    assert (shared_full.head_dim, shared_full.intermediate_size) == (32, 320)  # the double-wide MLP
    assert views["sliding_attention"].q_dim == 64 and spec.head_dim == 16
    # attention_k_eq_v: no v_proj on the full layers; KV-shared layers have neither k nor v
    names = {n: [lin.name for lin in k.layer.by_role("q", "k", "v")] for n, k in kinds.items()}
    assert names == {"sliding_attention": ["q_proj", "k_proj", "v_proj"], "full_attention": ["q_proj", "k_proj"],
                     "shared_kv_sliding_attention": ["q_proj"], "shared_kv_full_attention": ["q_proj"]}
    assert [n.site for n in kinds["sliding_attention"].layer.norms_at("q", "k", "v")] == ["q", "k", "v"]
    assert kinds["shared_kv_sliding_attention"].layer.traits.kv_shared
    # the kind's view reads its own head_dim in the per-head norms (negative control: the model's is 16)
    assert full.layer.norms_at("q")[0].size == 32


def test_total_is_a_hand_count():
    h, p, v, layers = 64, 8, 512, 4
    root = v * h + v * layers * p + layers * p * h + p + h
    def layer(q_dim, kv_dim, d, inter, shared, values):
        attn = 2 * h * q_dim + d + (0 if shared else h * kv_dim * (2 if values else 1) + d)
        return attn + 3 * h * inter + 5 * h + 2 * h * p
    total = root + layer(64, 32, 16, 160, False, True) + layer(128, 32, 32, 160, False, False) \
        + layer(64, 32, 16, 320, True, True) + layer(128, 32, 32, 320, True, False)
    assert counts.total_params(model_from_config(TINY, "g4")) == total


def test_all_linear_adapts_the_per_layer_projection_too():
    """peft's all-linear reaches per_layer_model_projection outside the layers (tracer); by name too."""
    spec = model_from_config(TINY, "g4")
    lora = inv.inventory(spec, TrainSpec(method="lora", rank=4), 2)
    root = [t.path for t in lora if t.kind == inv.ROOT and t.treatment == "adapter"]
    assert root == ["per_layer_model_projection.lora_A.weight", "per_layer_model_projection.lora_B.weight"]
    only = inv.inventory(spec, TrainSpec(method="lora", rank=4, target_modules=("q_proj",)), 2)
    assert not [t for t in only if t.kind == inv.ROOT and t.treatment == "adapter"]
    # k_proj is targeted where a kind has it; the KV-shared kinds simply have none
    k_only = inv.inventory(spec, TrainSpec(method="lora", rank=4, target_modules=("k_proj",)), 2)
    assert {t.kind for t in k_only if t.treatment == "adapter"} == {"sliding_attention", "full_attention"}
    # no per-layer inputs (the 31B's config): no root tensors beyond the embedding and final norm
    plain = model_from_config({**TINY, "hidden_size_per_layer_input": 0}, "g4p")
    assert [t.path for t in inv.base_tensors(plain) if t.kind == inv.ROOT] == ["embed_tokens.weight", "norm.weight"]


def test_defaults_follow_the_config_class():
    """Gemma4TextConfig's defaults where a config omits a field: every 6th layer full (the last
    always), global_head_dim 512, per-layer inputs 256 wide; an explicit null turns them off."""
    fields = {k: TINY[k] for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                                   "num_attention_heads", "num_key_value_heads", "head_dim")}
    spec = model_from_config({**fields, "num_hidden_layers": 8}, "g4d")
    kinds = {k.name: k for k in spec.kinds}
    assert kinds["full_attention"].indices == (5, 7) and kinds["full_attention"].head_dim == 512
    assert (spec.per_layer_input, spec.per_layer_vocab) == (256, 262144)
    off = model_from_config({**fields, "num_hidden_layers": 8, "hidden_size_per_layer_input": None}, "g4o")
    assert off.per_layer_input == 0 and not off.layer.by_role("ple_gate")


def test_the_multimodal_config_plans_its_text_decoder():
    text = model_from_config(TINY, "g4")
    outer = model_from_config({"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"],
                               "text_config": TINY, "vision_config": {"hidden_size": 32}}, "g4")
    assert counts.total_params(outer) == counts.total_params(text)
    assert [k.name for k in outer.kinds] == [k.name for k in text.kinds]


@pytest.mark.parametrize("change,message", [
    ({"layer_types": ["sliding_attention", "full_attention"]},
     "config field 'layer_types' lists 2 layer types, but num_hidden_layers is 4: they must agree"),
    ({"per_layer_config": {"7": {"head_dim": 32}}},
     "config field 'per_layer_config' names layer '7', but num_hidden_layers is 4: they must agree"),
    ({"enable_moe_block": True, "num_experts": 8, "top_k_experts": 2},
     "config.json lacks the field 'moe_intermediate_size', which enable_moe_block needs"),
    ({"per_layer_config": {"1": {"head_dim": "wide"}}},
     "config field 'per_layer_config' gives layer 1 head_dim 'wide': a positive integer is needed"),
    ({"num_kv_shared_layers": 3, "layer_types": ["sliding_attention"] + ["full_attention"] * 3},
     "a KV-shared layer's attention type has no earlier layer to read keys and values from"),
])
def test_bad_configs_exit_2_in_one_line(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **change}))
    result = CliRunner().invoke(plan_main, ["--model", str(path), "--method", "lora", "--rank", "4"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    with pytest.raises(CatalogError):  # the library raises what the CLI prints
        model_from_config({**TINY, **change}, "g4")
    # negative control: the same config without the change plans
    path.write_text(json.dumps(TINY))
    assert CliRunner().invoke(plan_main, ["--model", str(path), "--method", "lora", "--rank", "4"]).exit_code == 0


MOE = dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32)


def test_moe_layers_hold_a_dense_mlp_beside_the_experts():
    """enable_moe_block (the 26B-A4B): every layer keeps its dense MLP and adds a router whose
    projection is a plain Linear (h -> E, role router), 3-D fused experts at layers.N.experts, the
    router's weightless norm and three more norms (transformers 5.23 Gemma4TextDecoderLayer)."""
    spec = model_from_config({**TINY, **MOE}, "g4m")
    layer = {k.name: k for k in spec.kinds}["sliding_attention"].layer
    mlp = [(lin.name, lin.role, lin.in_features, lin.out_features) for lin in layer.linears
           if lin.role in ("gate", "up", "down", "router")]
    assert mlp == [("gate_proj", "gate", 64, 160), ("up_proj", "up", 64, 160), ("down_proj", "down", 160, 64),
                   ("router.proj", "router", 64, 8)]
    assert [(n.name, n.site, n.scale) for n in layer.norms_at("moe_in", "mlp_out")] == [
        ("post_feedforward_layernorm", "mlp_out", True), ("router.norm", "moe_in", False),
        ("pre_feedforward_layernorm_2", "moe_in", True), ("post_feedforward_layernorm_1", "mlp_out", True),
        ("post_feedforward_layernorm_2", "mlp_out", True)]
    moe = layer.moe
    assert (moe.experts, moe.top_k, moe.intermediate, moe.beside_dense, moe.router_linear) == (8, 2, 32, True, True)
    paths = {t.path: t.shape for t in inv.base_tensors(spec) if t.kind == "sliding_attention"}
    assert paths["layers.*.experts.gate_up_proj"] == (8, 64, 64) and paths["layers.*.experts.down_proj"] == (8, 64, 32)
    assert paths["layers.*.router.scale"] == (64,) and paths["layers.*.router.per_expert_scale"] == (8,)
    assert "layers.*.mlp.router.weight" not in paths and "layers.*.router.norm.weight" not in paths


def test_moe_total_is_a_hand_count():
    """The dense layers' count plus, per layer, router.proj (E*h), its scale (h) and per-expert
    scale (E), the experts (E*3*I*h) and three norms (3h); negative control: the dense config's."""
    h, e, i, layers = 64, 8, 32, 4
    extra = e * h + h + e + e * 3 * i * h + 3 * h
    dense = counts.total_params(model_from_config(TINY, "g4"))
    assert counts.total_params(model_from_config({**TINY, **MOE}, "g4m")) == dense + layers * extra


def test_all_linear_adapts_the_router_and_dense_mlp_not_the_experts():
    """peft 0.21 has no checkpoint-conversion pattern for gemma4 (tracer, tests/probes/test_gemma4_moe_traced.py):
    all-linear adapts router.proj and the dense MLP's Linears, and targets no expert parameter."""
    from planner.model import targets

    spec = model_from_config({**TINY, **MOE}, "g4m")
    train = TrainSpec(method="lora", rank=4)
    view = spec.by_kind()[0]
    assert "router.proj" in targets.targeted_names(view, train)
    assert targets.targeted_parameters(view, train) == ()
    lora = inv.inventory(spec, train, 2)
    assert not [t for t in lora if t.treatment == "adapter" and "experts" in t.path]
    # QLoRA packs router.proj with the other Linears; the experts stay unpacked (fp32)
    q = inv.inventory(spec, TrainSpec(method="qlora", rank=4), 2)
    assert {t.treatment for t in q if t.path == "layers.*.router.proj.weight"} == {"4bit"}
    assert {(t.treatment, t.dtype_bytes) for t in q if t.role == "experts"} == {("frozen", 4)}


@pytest.mark.parametrize("change,message", [
    ({"top_k_experts": 9}, "config field 'top_k_experts' (9) exceeds 'num_experts' (8)"),
    ({"num_experts": 0}, "config field 'num_experts' must be a positive integer, got 0"),
])
def test_bad_moe_configs_exit_2_in_one_line(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **MOE, **change}))
    result = CliRunner().invoke(plan_main, ["--model", str(path), "--method", "lora", "--rank", "4"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    path.write_text(json.dumps({**TINY, **MOE}))  # negative control
    assert CliRunner().invoke(plan_main, ["--model", str(path), "--method", "lora", "--rank", "4"]).exit_code == 0


def test_moe_plan_notes_say_what_all_linear_and_qlora_do():
    """The plan says all-linear adapts the dense MLP and router.proj but not the experts (naming
    target_parameters instead), and under QLoRA that those Linears are packed, the experts fp32."""
    from planner import plan

    spec = model_from_config({**TINY, **MOE}, "g4m")
    lora = " ".join(plan(spec, "h100", TrainSpec(method="lora", rank=4)).notes)
    assert "router.proj" in lora and "never the fused experts" in lora and "4 bits" not in lora
    qlora = " ".join(plan(spec, "h100", TrainSpec(method="qlora", rank=4)).notes)
    assert "packs them to 4 bits while the experts stay fp32" in qlora
    experts = plan(spec, "h100", TrainSpec(method="lora", rank=4,
                                           target_parameters=("experts.gate_up_proj", "experts.down_proj"))).notes
    assert "LoRA on the fused experts too" in " ".join(experts)
    # negative control: the dense config says none of it
    assert "router.proj" not in " ".join(plan(model_from_config(TINY, "g4"), "h100", TrainSpec(method="lora", rank=4)).notes)


def test_the_26b_a4b_active_count_is_the_cards():
    """The catalog's 26B-A4B: 25.2B parameters in all (tests/planner/test_counts.py) and, with 8 of
    its 128 experts per token, 3.8B active, the model card's figure (negative control: all experts
    active is the total, not 3.8B)."""
    from planner.model.catalog import get_model

    spec = get_model("gemma-4-26b-a4b")
    moe = spec.moe
    experts = counts.role_params(spec, "experts")
    active = counts.total_params(spec) - experts + experts * moe.top_k // moe.experts
    assert (moe.experts, moe.top_k, moe.intermediate) == (128, 8, 704)
    assert round(active / 1e9, 1) == 3.8
    assert round(counts.total_params(spec) / 1e9, 1) == 25.2


def test_softcapped_logits_keep_tanh_in_the_logits_dtype():
    """Final-logit softcapping keeps tanh's output in the logits' dtype: the compute dtype under
    autocast, lm_head's own without it (fp32 for QLoRA, whose tied embedding is fp32; tracer,
    Gemma-4-26B-A4B and 31B cut to 2 layers, QLoRA pure bf16: an fp32 [1, 1856, 262144] tanh)."""
    from planner.memory import terms as C

    spec = model_from_config({**TINY, "final_logit_softcapping": 30.0}, "g4s")
    t, v = 64, 512
    for method, precision, size in (("qlora", "pure", 4), ("qlora", "autocast", 2), ("lora", "pure", 2)):
        train = TrainSpec(method=method, rank=4, batch_size=1, seq_len=t, precision=precision)
        assert C.softcap_saved(spec, train, C.precision(train, "bf16")) == t * v * size
    # negative control: no softcapping, nothing kept
    plain = model_from_config(TINY, "g4")
    train = TrainSpec(method="qlora", rank=4, batch_size=1, seq_len=t, precision="pure")
    assert C.softcap_saved(plain, train, C.precision(train, "bf16")) == 0
