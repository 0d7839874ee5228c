"""The architecture table: layouts, parameter counts and the memory terms that depend on them.

Expected values are worked out by hand from transformers' modeling files, or are bytes the
exact tracer measured on tiny models (saved-for-backward tensors, each storage once, forward
under bf16 autocast), as each test says.
"""
import pytest

from planner.memory import terms as C
from planner.model import counts
from planner.model import targets
from planner.model.architectures import TABLE
from planner.model.catalog import CatalogError, UnknownArchitecture, model_from_config
from tiny_layouts import TINY, layout, spec, train


def test_every_entry_builds_a_layer_with_roles():
    for model_type in TABLE:
        if TABLE[model_type].hybrid:  # several layouts a model: tests/planner/test_hybrids.py
            continue
        fields = {"moe_intermediate_size": 48, "num_experts": 8, "num_experts_per_tok": 2,
                  "shared_expert_intermediate_size": 64}
        if model_type in ("deepseek_v3", "deepseek_v32"):  # multi-head latent attention's fields, every head
            fields.update(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,  # with its k / v
                          num_key_value_heads=4, q_lora_rank=48)
        if model_type == "deepseek_v32":  # and the sparse-attention indexer's
            fields.update(index_n_heads=4, index_head_dim=16, index_topk=8)
        model = spec(model_type, **fields)
        for kind in model.kinds:  # a Gated DeltaNet kind has out_proj (delta_out) and no qk-norm
            layer = kind.layer
            roles = {lin.role for lin in layer.linears}
            assert roles >= {"o"} or (layer.deltanet and roles >= {"delta_out"}), model_type
            assert layer.norms_at("q", "k") or layer.traits.qk_norm == "none" or layer.deltanet
            assert (layer.moe is None) == ("down" in roles), model_type


def test_split_fused_and_biased_layouts():
    assert layout(spec("llama"))[:2] == [("q_proj", "q", 128, 96, False), ("k_proj", "k", 128, 48, False)]
    assert [r[:2] for r in layout(spec("phi3"))] == [("qkv_proj", "qkv"), ("o_proj", "o"),
                                                      ("gate_up_proj", "gate_up"), ("down_proj", "down")]
    assert layout(spec("qwen2"))[0][4] and not layout(spec("qwen2"))[3][4]  # q/k/v biases, none on o
    assert all(r[4] for r in layout(moe("gpt_oss")))  # gpt-oss: attention_bias defaults to True


def test_norm_sites_and_qk_norms():
    """Qwen3 / Gemma-3: per-head q_norm and k_norm (head_dim wide); OLMo-2: over the whole q
    and k projections and no input norm (post-norm); Gemma-2/3: four hidden norms."""
    qwen3 = spec("qwen3")
    assert [(n.site, n.size, n.per_head) for n in qwen3.layer.norms] == [
        ("attn_in", 128, False), ("mlp_in", 128, False), ("q", 24, True), ("k", 24, True)]
    olmo2 = spec("olmo2")
    assert [(n.site, n.size) for n in olmo2.layer.norms] == [("attn_out", 128), ("mlp_out", 128), ("q", 96), ("k", 48)]
    assert len(spec("gemma3_text").layer.norms) == 6 and len(spec("gemma2").layer.norms) == 4
    # parameter counts: llama's plus the qk-norm weights, per layer
    llama = spec("llama")
    assert counts.role_params(qwen3, "norm", "final_norm") - counts.role_params(llama, "norm", "final_norm") == 2 * (24 + 24)
    assert counts.role_params(olmo2, "norm", "final_norm") - counts.role_params(llama, "norm", "final_norm") == 2 * (96 + 48)


def test_qk_norm_saved_bytes_as_traced():
    """Tracer (tiny bf16 models, h 128, 4 heads of 24, 2 kv heads, T 40, LoRA all-linear):
    Qwen3 keeps 4Tq + 4T*heads + 4Tkv + 4T*kv_heads bytes more per layer than Llama,
    OLMo-2 4Tq + 4Tkv + 8T (its norms are over the whole projection: T rows)."""
    t = train()
    p = C.precision(t, "bf16")
    tq, tkv, T = 40 * 96, 40 * 48, 40
    assert C.layer_saved(spec("qwen3"), t, p) - C.layer_saved(spec("llama"), t, p) == 4 * tq + 4 * T * 4 + 4 * tkv + 4 * T * 2
    # OLMo-2 has no input norm but a post-attention one: the hidden norms are as many as Llama's
    assert C.layer_saved(spec("olmo2"), t, p) - C.layer_saved(spec("llama"), t, p) == 4 * tq + 4 * tkv + 8 * T
    # full fine-tuning: Qwen3's norm weights keep the bf16 normalized q and k as well (6Tq + 6Tkv)
    f = train(method="full")
    pf = C.precision(f, "bf16")
    assert (C.layer_saved(spec("qwen3"), f, pf) - C.layer_saved(spec("llama"), f, pf)
            == 6 * tq + 4 * T * 4 + 6 * tkv + 4 * T * 2)


def test_post_norm_layer_zero_keeps_its_norms():
    """OLMo-2 has no input norm: nothing is left unrecorded in layer 0 (both its norms read
    block outputs, which need gradients); Llama's layer 0 input norm keeps nothing."""
    t = train()
    p = C.precision(t, "bf16")
    assert C.first_norm_unrecorded(spec("olmo2"), t, p) == 0
    assert C.first_norm_unrecorded(spec("llama"), t, p) == C.norm_saved(spec("llama"), t, p) > 0


def test_sliding_window_mask_and_rope_tables():
    """Gemma-3: sliding layers at seq >= window keep a (b, 1, s, s) bias and repeated k / v;
    one RoPE pair per attention type; the first 5 of every 6 layers slide."""
    g3 = spec("gemma3_text", sliding_window=16, num_hidden_layers=7)
    assert [(k.name, k.indices) for k in g3.kinds] == [("sliding_attention", (0, 1, 2, 3, 4, 6)),
                                                         ("full_attention", (5,))]
    assert [k.layer.traits.sliding_window for k in g3.kinds] == [16, None] and g3.traits.rope_tables == 2
    t = train(seq_len=40)
    p = C.precision(t, "bf16")
    assert C.sliding_mask_saved(g3, t, p) == 6 * (40 * 40 * 2 + 2 * 40 * (96 - 48) * 2)
    assert C.sliding_mask_saved(g3, train(seq_len=15), p) == 0  # shorter than the window: no mask
    mistral = spec("mistral", sliding_window=4096)
    assert [(k.name, k.count) for k in mistral.kinds] == [("sliding_attention", 2)]
    assert C.sliding_mask_saved(mistral, t, p) == 0
    # use_sliding_window off: one kind, no window
    assert [(k.name, k.count, k.layer.traits.sliding_window) for k in spec("qwen3", sliding_window=16).kinds] == [
        ("decoder", 2, None)]


def test_layer_types_make_the_kinds():
    """A config's layer_types name the sliding layers wherever they are; the kinds' counts sum
    to the layers, and the per-kind parameters to the model's."""
    g3 = spec("gemma3_text", sliding_window=16, num_hidden_layers=4,
              layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"])
    assert [(k.name, k.indices) for k in g3.kinds] == [("sliding_attention", (1, 3)), ("full_attention", (0, 2))]
    assert sum(v.num_layers for v in g3.by_kind()) == g3.num_layers == 4
    assert sum(counts.total_params(v) for v in g3.by_kind()) - counts.total_params(g3) == (
        (len(g3.kinds) - 1) * (counts.total_params(g3) - counts.role_params(
            g3, "norm", "linear", "bias", "router", "router_bias", "experts", "expert_bias", "sinks")))


def test_an_unknown_layer_kind_or_role_is_refused_by_name():
    from dataclasses import replace

    from planner.model.architectures import UnknownLayerKind, check_known

    g3 = spec("gemma3_text", sliding_window=16, num_hidden_layers=7)
    check_known(g3.kinds)  # the catalog's kinds are known
    odd = replace(g3.kinds[0], name="lightning_attention")
    with pytest.raises(UnknownLayerKind, match="layer kind 'lightning_attention' \\(layers 0, 1, 2, 3, 4, 6\\)"):
        check_known((odd,))
    lin = replace(g3.kinds[0].layer.linears[0], role="in_proj_qkvz")
    strange = replace(g3.kinds[0], layer=replace(g3.kinds[0].layer, linears=(lin,)))
    with pytest.raises(UnknownLayerKind, match="q_proj of the sliding_attention layers has role 'in_proj_qkvz'"):
        check_known((strange,))


MOE = {
    "qwen3_moe": dict(intermediate_size=256, moe_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                      norm_topk_prob=True),
    "mixtral": dict(intermediate_size=48, num_local_experts=8, num_experts_per_tok=2),
    "gpt_oss": dict(intermediate_size=48, num_local_experts=8, num_experts_per_tok=2),
}


def moe(model_type):
    return spec(model_type, **MOE[model_type])


def test_moe_parameter_counts():
    """Router E*h (+E), experts E*(2I*h + I*h) (+E*(2I + h) biases), gpt-oss sinks: one per head."""
    q = moe("qwen3_moe")
    assert counts.role_params(q, "router", "router_bias", "experts", "expert_bias") == 2 * (8 * 128 + 8 * 3 * 48 * 128)
    g = moe("gpt_oss")
    assert counts.role_params(g, "router", "router_bias", "experts", "expert_bias") == 2 * (8 * 128 + 8 + 8 * 3 * 48 * 128 + 8 * (96 + 128))
    assert counts.role_params(g, "sinks") == 2 * 4 and counts.role_params(q, "sinks") == 0


def test_all_linear_on_moe_follows_peft():
    """peft rewrites all-linear on Mixtral / Qwen3-MoE to the router (r), gate_up (2r) and down
    (r), each per expert; on gpt-oss it stays on the attention Linears."""
    q, t = moe("qwen3_moe"), train()
    parts = [(p.part, p.rank, p.experts, p.params) for p in targets.targeted_parameters(q, t)]
    assert parts == [("router", 8, 1, 8 * (128 + 8)), ("gate_up", 16, 8, 8 * 16 * (128 + 96)),
                     ("down", 8, 8, 8 * 8 * (48 + 128))]
    assert targets.targeted_parameters(moe("gpt_oss"), t) == ()
    explicit = train(target_modules=("q_proj",), target_parameters=("mlp.experts.gate_up_proj",))
    assert [(p.part, p.rank) for p in targets.targeted_parameters(moe("gpt_oss"), explicit)] == [("gate_up", 8)]
    with pytest.raises(targets.UnsupportedMethod, match="DoRA"):
        counts.adapter_params(q, train(method="dora"))
    with pytest.raises(ValueError, match="no fused expert parameters"):
        counts.adapter_params(spec("llama"), explicit)


def test_moe_saved_bytes_as_traced():
    """Bytes the tracer measured for one MoE block (parameters excluded), tiny models above at
    T = 40 tokens, top-2 of 8 experts, bf16, forced balanced routing. Router and experts:
    Qwen3-MoE full 86,432 (12,640 + 73,792); LoRA all-linear 465,440 with the merged expert
    weights and their factors' copies. The experts alone: Qwen3-MoE with LoRA on the
    attention only 45,632; gpt-oss full 97,472, LoRA (attention only) 68,672."""
    def parts(model, **kw):
        t = train(**kw)
        return C.moe_saved_parts(model, t, C.precision(t, "bf16"))

    attention = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert sum(parts(moe("qwen3_moe"), method="full").values()) == 86_432
    assert sum(parts(moe("qwen3_moe")).values()) == 465_440
    assert parts(moe("qwen3_moe"), target_modules=attention)["experts"] == 45_632
    assert parts(moe("gpt_oss"), method="full")["experts"] == 97_472
    assert parts(moe("gpt_oss"))["experts"] == 68_672


def test_quantized_moe_keeps_fp32_experts():
    """bitsandbytes quantizes nn.Linear only: QLoRA packs the attention, and the experts are
    counted in fp32 (prepare_model_for_kbit_training); the plan says so."""
    from planner import plan

    q = moe("qwen3_moe")
    t = train(method="qlora", target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    p = C.precision(t, "bf16")
    packed = 2 * sum(C.quantized_weight_bytes(lin.in_features * lin.out_features) for lin in q.linears)
    assert C.weights_base(q, t, p) == packed + (counts.total_params(q) - counts.linear_weight_params(q)) * 4
    notes = plan(q, "h100", t).notes
    assert any("stay unquantized" in n for n in notes) and any("balanced routing" in n for n in notes)


def test_bad_configs_name_the_problem():
    with pytest.raises(UnknownArchitecture, match="probe --device fake --model CONFIG") as info:
        model_from_config({"model_type": "jetmoe", **TINY}, "x")
    assert info.value.config["model_type"] == "jetmoe"
    with pytest.raises(CatalogError, match="not decoder-only causal LMs"):
        model_from_config({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"], **TINY}, "x")
    with pytest.raises(CatalogError, match="encoder-decoder"):
        model_from_config({"model_type": "llama", "is_encoder_decoder": True, **TINY}, "x")
    with pytest.raises(CatalogError, match="lacks the field 'num_experts_per_tok'"):
        fields = dict(MOE["mixtral"])
        del fields["num_experts_per_tok"]
        spec("mixtral", **fields)
    missing = dict(TINY)
    del missing["hidden_size"]
    with pytest.raises(CatalogError, match="lacks the field 'hidden_size'"):
        model_from_config({"model_type": "llama", **missing}, "x")


def test_multimodal_config_plans_its_text_decoder():
    text = {"model_type": "gemma3_text", **TINY}
    model = model_from_config({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                               "text_config": text}, "gemma-mm")
    assert model.model_type == "gemma3_text" and len(model.layer.norms) == 6


def test_lora_dropout_keeps_a_mask_per_adapted_input():
    """peft's lora_dropout: one byte per input element per adapted module (CUDA's
    native_dropout mask); DoRA also keeps a c-byte copy of each adapted weight. Layer 0's
    q/k/v inputs need no gradient: no masks there."""
    llama = spec("llama")
    t0, t1 = train(), train(lora_dropout=0.05)
    p = C.precision(t1, "bf16")
    sigma_in = sum(lin.in_features for lin in llama.linears)  # 5h + q_dim + I
    assert C.layer_saved(llama, t1, p) - C.layer_saved(llama, t0, p) == 40 * sigma_in
    d0, d1 = train(method="dora"), train(method="dora", lora_dropout=0.1)
    weights = sum(lin.in_features * lin.out_features for lin in llama.linears)
    assert C.layer_saved(llama, d1, p) - C.layer_saved(llama, d0, p) == 40 * sigma_in + 2 * weights
    qkv_in = 3 * 128
    assert C.first_norm_unrecorded(llama, t1, p) - C.first_norm_unrecorded(llama, t0, p) == 40 * qkv_in
    with pytest.raises(ValueError, match="lora dropout"):
        train(lora_dropout=1.0)


def test_eager_attention_asked_for_keeps_the_probabilities():
    """Tracer, tiny Llama asked for eager: per layer 6*B*H*S^2 + c*T*(q_dim - 2*kv_dim) -
    4*B*H*S bytes more than SDPA (fp32 softmax and its bf16 copy; k and v repeated to every
    head; no log-sum-exp), for the adapter methods."""
    llama = spec("llama")
    for method in ("lora", "qlora", "dora"):
        sdpa, eager = train(method=method), train(method=method, attn_implementation="eager")
        p = C.precision(sdpa, "bf16")
        b, h, s, t = 1, 4, 40, 40
        assert (C.layer_saved(llama, eager, p) - C.layer_saved(llama, sdpa, p)
                == 6 * b * h * s * s + 2 * t * (96 - 2 * 48) - 4 * b * h * s), method
    # flash_attention_2 keeps what SDPA's flash kernel keeps
    fa2 = train(attn_implementation="flash_attention_2")
    assert C.layer_saved(llama, fa2, C.precision(fa2, "bf16")) == C.layer_saved(llama, train(), C.precision(fa2, "bf16"))


def test_olmo3_default_layer_types_and_starcoder2_layout():
    """OLMo-3 without layer_types: every 4th layer full (Olmo3Config's default); StarCoder2: a
    plain MLP (c_fc, c_proj), LayerNorms with a bias, use_bias on every Linear."""
    from planner.model.catalog import model_from_config

    base = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=8,
                num_attention_heads=4, num_key_value_heads=2, sliding_window=32)
    olmo3 = model_from_config({"model_type": "olmo3", **base}, "o3")
    assert {k.name: k.indices for k in olmo3.kinds} == {"sliding_attention": (0, 1, 2, 4, 5, 6),
                                                       "full_attention": (3, 7)}
    sc2 = model_from_config({"model_type": "starcoder2", **base}, "sc2")
    assert [(lin.name, lin.role, lin.bias) for lin in sc2.layer.linears][-2:] == [("c_fc", "fc_in", True),
                                                                                 ("c_proj", "down", True)]
    assert all(n.bias for n in sc2.layer.norms)
    no_bias = model_from_config({"model_type": "starcoder2", **base, "use_bias": False}, "sc2nb")
    assert not any(lin.bias for lin in no_bias.layer.linears)


def test_seed_oss_biases_and_its_dropout_note():
    """Seed-OSS: q/k/v biases by default, o_proj's only with attention_out_bias; its config's default
    dropout 0.1 is not planned, and the plan says so (negative control: dropout 0, no note)."""
    from planner.model.catalog import model_from_config

    base = dict(model_type="seed_oss", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    spec = model_from_config(base, "seed")
    assert [lin.bias for lin in spec.layer.linears][:4] == [True, True, True, False]
    assert any("residual_dropout 0.1" in n for n in spec.notes)
    assert not model_from_config({**base, "attention_dropout": 0, "residual_dropout": 0}, "seed0").notes


def test_glm4_layout_and_its_config_defaults():
    """GLM-4 (configuration_glm4.py defaults): q/k/v biases, none on o_proj; one fused gate_up_proj of
    2I; four norms (input, post_self_attn, post_attention, post_mlp); RoPE on half of head_dim 128 when
    the config omits partial_rotary_factor and head_dim. Negative control: attention_bias False and a
    full rotary factor are read from the config."""
    from planner.model.catalog import model_from_config

    base = dict(model_type="glm4", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2)
    glm = model_from_config(base, "glm4")
    assert [(lin.name, lin.out_features, lin.bias) for lin in glm.layer.linears] == [
        ("q_proj", 512, True), ("k_proj", 256, True), ("v_proj", 256, True), ("o_proj", 64, False),
        ("gate_up_proj", 320, False), ("down_proj", 64, False)]
    assert [(n.name, n.site) for n in glm.layer.norms] == [
        ("input_layernorm", "attn_in"), ("post_self_attn_layernorm", "attn_out"),
        ("post_attention_layernorm", "mlp_in"), ("post_mlp_layernorm", "mlp_out")]
    assert glm.layer.traits.rotary_fraction == 0.5 and glm.layer.traits.placement == "sandwich"
    other = model_from_config({**base, "attention_bias": False, "head_dim": 16,
                               "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                   "partial_rotary_factor": 1.0}}, "glm4b")
    assert not any(lin.bias for lin in other.layer.linears)
    assert other.layer.traits.rotary_fraction == 1.0 and other.layer.linears[0].out_features == 64


def test_exaone4_post_norms_qk_norm_and_its_layer_pattern():
    """EXAONE-4 (configuration_exaone4.py): two post-norms and per-head q/k norms a layer; with a
    sliding window every 4th layer is full, by sliding_window_pattern or layer_types; no window, one
    kind. A pattern string ("LLLG") without layer_types is refused in one line naming the field."""
    from planner.model.catalog import CatalogError, model_from_config

    base = dict(model_type="exaone4", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=8,
                num_attention_heads=4, num_key_value_heads=2)
    ex = model_from_config({**base, "sliding_window": 32}, "ex4")
    assert {k.name: k.indices for k in ex.kinds} == {"sliding_attention": (0, 1, 2, 4, 5, 6),
                                                    "full_attention": (3, 7)}
    assert [(n.name, n.site, n.per_head) for n in ex.layer.norms] == [
        ("post_attention_layernorm", "attn_out", False), ("post_feedforward_layernorm", "mlp_out", False),
        ("q_norm", "q", True), ("k_norm", "k", True)]
    assert [k.name for k in model_from_config({**base, "sliding_window": None}, "ex4n").kinds] == ["decoder"]
    types = ["sliding_attention"] * 7 + ["full_attention"]
    given = model_from_config({**base, "sliding_window": 32, "sliding_window_pattern": "LLLG", "layer_types": types},
                              "ex4t")
    assert {k.name: k.indices for k in given.kinds}["full_attention"] == (7,)
    with pytest.raises(CatalogError, match="sliding_window_pattern"):
        model_from_config({**base, "sliding_window": 32, "sliding_window_pattern": "LLLG"}, "ex4s")


def test_cohere_parallel_layer_and_its_qk_norm_weights():
    """Cohere (modeling_cohere.py): one input LayerNorm, no bias, read by attention and the MLP
    alike; with use_qk_norm, q_norm (heads, head_dim) and k_norm (kv_heads, head_dim): a weight per
    head. Cohere-2: the same layer, every 4th layer full. Parameter counts as transformers builds
    them (tiny configs: 205,504 with the qk-norm, 205,120 for Cohere-2's 4 layers)."""
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, pad_token_id=0)
    co = model_from_config({**base, "model_type": "cohere", "use_qk_norm": True}, "co")
    assert [(n.name, n.site, n.params) for n in co.layer.norms] == [
        ("input_layernorm", "attn_in", 64), ("q_norm", "q", 64), ("k_norm", "k", 32)]
    assert co.traits.placement == "parallel" and co.tie_word_embeddings
    assert counts.total_params(co) == 205_504
    plain = model_from_config({**base, "model_type": "cohere"}, "co0")
    assert [n.name for n in plain.layer.norms] == ["input_layernorm"]
    co2 = model_from_config({**base, "model_type": "cohere2", "sliding_window": 32}, "co2")
    assert {k.name: k.indices for k in co2.kinds} == {"sliding_attention": (0, 1, 2), "full_attention": (3,)}
    assert counts.total_params(co2) == 205_120


def test_parallel_layer_shares_one_input_between_attention_and_mlp():
    """Full fine-tuning keeps one copy of the normed input for q, k, v, gate and up in a parallel
    layer (Cohere), two (the attention's and the MLP's) in a pre-norm one; a negative control: the
    same dims as Llama differ by one T x h input and one norm's saved set."""
    base = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    tr = train(method="full", batch_size=2, seq_len=64)
    prec = C.precision(tr, "bf16")
    co = model_from_config({**base, "model_type": "cohere"}, "co")
    ll = model_from_config({**base, "model_type": "llama"}, "ll")
    t, h = 128, 64
    assert C.linear_inputs_saved(ll, tr, prec) - C.linear_inputs_saved(co, tr, prec) == t * h * 2
    # Cohere's centered norm: two fp32 centered inputs, rsqrt, the fp32 normalized input (its
    # weight trained) and the weight's fp32 copy
    assert C.norm_saved(co, tr, prec) == 3 * t * h * 4 + t * 4 + h * 4


def test_apertus_plain_mlp_xielu_and_its_saved_set():
    """Apertus (modeling_apertus.py): q/k/v/o, per-head q/k norms, a plain up_proj -> xIELU ->
    down_proj MLP and two learned scalars (alpha_p, alpha_n) a layer: 197,320 parameters on the
    tiny 4-layer config, as transformers builds it. xIELU keeps x's mask and two more T x I
    tensors (three when its alphas train), fp32 under autocast (CUDA runs expm1 and softplus in
    fp32): tracer, tiny Apertus LoRA (T 128, I 160, 2 layers) 368,672 B above the same model with
    GELU, full fine-tuning 532,560, LoRA in pure bf16 (no fp32) 204,824 (scalars: 24 to 80 B of
    them). Its backward in full
    fine-tuning's first-layer walk: 17 bytes per T x I element under bf16 autocast, 9 in pure
    bf16 (tracer, h 1024, I 8192, 512-token vocabulary, batch 2 x 1024, checkpointing)."""
    base = dict(model_type="apertus", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    ap = model_from_config(base, "ap")
    assert layout(ap.layer) == [("q_proj", "q", 64, 64, False), ("k_proj", "k", 64, 32, False),
                                ("v_proj", "v", 64, 32, False), ("o_proj", "o", 64, 64, False),
                                ("up_proj", "fc_in", 64, 160, False), ("down_proj", "down", 160, 64, False)]
    assert [n.name for n in ap.layer.norms] == ["attention_layernorm", "feedforward_layernorm", "q_norm", "k_norm"]
    assert counts.total_params(ap) == 197_320
    gelu = model_from_config({**base, "hidden_act": "gelu"}, "apg")
    assert counts.total_params(gelu) == 197_320 - 8  # no alphas
    ti = 128 * 160
    for method, precision, per_layer in (("lora", "autocast", ti * 9), ("full", "autocast", ti * 13),
                                         ("lora", "pure", ti * 5)):
        tr = train(method=method, batch_size=2, seq_len=64, precision=precision)
        prec = C.precision(tr, "bf16")
        assert C.mlp_core_saved(ap, tr, prec) - C.mlp_core_saved(gelu, tr, prec) == per_layer, (method, precision)
    for precision, per_element in (("autocast", 17), ("pure", 9)):
        tr = train(method="full", batch_size=2, seq_len=64, precision=precision)
        assert C.mlp_backward_work(ap, tr, C.precision(tr, "bf16")) == ti * per_element
    # a plain MLP's activation backward: its output and input gradients; a gated one's three
    tr = train(method="full", batch_size=2, seq_len=64)
    llama = model_from_config({**base, "model_type": "llama"}, "ll")
    assert C.mlp_backward_work(gelu, tr, C.precision(tr, "bf16")) == 2 * ti * 2
    assert C.mlp_backward_work(llama, tr, C.precision(tr, "bf16")) == 3 * ti * 2
