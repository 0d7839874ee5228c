"""Exact parameter counts against published totals and hand counts."""
import pytest

from planner import TrainSpec, get_model, model_names
from planner.model import counts
from planner.model import targets

# Published totals (model cards / safetensors metadata of the HF checkpoints).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,
    "gemma-2-2b": 2_614_341_888,
    "phi-3-mini": 3_821_079_552,
    "olmo-3-7b": 7_298_011_136,
    "apertus-8b": 8_053_338_176,
    "olmo-3-32b": 32_233_522_176,
    "seed-oss-36b": 36_151_104_512,
}


@pytest.mark.parametrize("name,total", sorted(PUBLISHED.items()))
def test_published_totals(name, total):
    assert counts.total_params(get_model(name)) == total


def _entry(name):
    import json

    import data

    models = json.loads(data.path("models.json").read_text())["models"]
    return next(m for m in models if m["name"] == name)


UNITS = {"B": 1e9, "T": 1e12}


def _rounded(total: int, published: str) -> bool:
    """Whether ``total`` rounds to a published figure such as "3.03B" or "1T" (to the digits given)."""
    digits = published[:-1]
    decimals = len(digits.partition(".")[2])
    return published[-1:] in UNITS and round(total / UNITS[published[-1]], decimals) == float(digits)


def _near(total: int, published: str, within: float = 0.01) -> bool:
    """Whether ``total`` is within ``within`` (1%) of a rounded published figure such as "355B"."""
    return published[-1:] in UNITS and abs(total / (float(published[:-1]) * UNITS[published[-1]]) - 1) < within


@pytest.mark.parametrize("name", model_names())
def test_every_catalog_model_matches_its_published_total(name):
    model = get_model(name)
    if model.published_params is None:
        # no exact published total was found: the entry says so and gives the rounded figure
        entry = _entry(name)
        assert "not found" in entry["_params_source"], name
        if "vision_params" in entry:
            # the text decoder of a multimodal checkpoint whose published total counts its vision
            # tower too (counted by transformers, not the planner): within the round figure's 0.5%
            assert _near(counts.total_params(model) + entry["vision_params"], entry["published_params_rounded"],
                         within=0.005), name
            return
        if "published_params_approx" in entry:
            # a published figure the count does not round to (GLM-4.5's 355B): within 1%, the
            # entry saying why
            assert _near(counts.total_params(model), entry["published_params_approx"]), name
            return
        if entry.get("published_effective_params_rounded"):
            # Gemma 4's "effective" count: the decoder without its per-layer embedding tables
            ple = model.per_layer_vocab * model.num_layers * model.per_layer_input
            assert _rounded(counts.total_params(model) - ple, entry["published_effective_params_rounded"]), name
        elif entry["published_params_rounded"] is None:
            assert name in HAND_COUNTED, name  # nothing published to compare: a hand count instead
        else:
            assert _rounded(counts.total_params(model), entry["published_params_rounded"]), name
        return
    assert counts.total_params(model) == model.published_params


def _gemma4_e4b_by_hand():
    """Gemma 4 E4B's text decoder from its config, term by term (transformers 5.23
    modeling_gemma4): 42 layers, 7 of them full (every 6th), the last 18 KV-shared (15 sliding, 3
    full); h 2560, I 10240, 8 heads of 256 (full layers 512), 2 kv heads; per-layer inputs 256 wide
    from a 262144-row table; a tied embedding."""
    v, h, i, layers, p = 262144, 2560, 10240, 42, 256
    embeddings = v * h + v * layers * p + layers * p * h + p + h  # embed, PLE table, its projection and norm; final norm
    def layer(d, shared):
        q_o = 2 * h * 8 * d
        k_v = 0 if shared else 2 * h * 2 * d + d  # k_proj, v_proj, k_norm (v_norm has no weight)
        return q_o + d + k_v + 3 * h * i + 5 * h + 2 * h * p  # q_norm; MLP; five norms; per-layer gate / projection
    return embeddings + 20 * layer(256, False) + 4 * layer(512, False) + 15 * layer(256, True) + 3 * layer(512, True)


def _command_r7b_by_hand():
    """Command R7B from its config, term by term (transformers 5.23 modeling_cohere2): 32 layers
    (the sliding and the full ones hold the same weights), h 4096, I 14336, 32 heads of 128, 8 kv
    heads, no biases; one CohereLayerNorm (a weight, no bias) a layer that attention and the MLP
    both read; a 256000-row tied embedding and a final norm. The card's "7B" is not this total
    (about 8.03B), so nothing published compares."""
    v, h, i, layers, heads, kv, d = 256000, 4096, 14336, 32, 32, 8, 128
    attention = h * heads * d + 2 * h * kv * d + heads * d * h  # q_proj; k_proj, v_proj; o_proj
    layer = attention + 3 * h * i + h  # gate, up, down; input_layernorm
    return v * h + layers * layer + h


def _starcoder2_15b_by_hand():
    """StarCoder2-15B from its config, term by term (transformers 5.23 modeling_starcoder2): 40
    layers, h 6144, I 24576, 48 heads of 128, 4 kv heads, a bias on every Linear (use_bias); two
    LayerNorms a layer and a final one, each a weight and a bias; a 49152-row embedding and an
    untied lm_head (no bias). The card's "15B" is not this total (about 15.96B)."""
    v, h, i, layers, heads, kv, d = 49152, 6144, 24576, 40, 48, 4, 128
    attention = (h * heads * d + heads * d) + 2 * (h * kv * d + kv * d) + (heads * d * h + h)  # q; k, v; o
    mlp = (h * i + i) + (i * h + h)  # c_fc, c_proj
    layer = attention + mlp + 2 * 2 * h  # input_layernorm, post_attention_layernorm
    return 2 * v * h + layers * layer + 2 * h


def _ministral3_8b_by_hand():
    """Ministral 3 8B's text decoder from its config, term by term (transformers 5.23
    modeling_ministral3): 34 layers, h 4096, I 14336, 32 heads of 128, 8 kv heads, no biases; two
    RMSNorms a layer and a final one; a 131072-row embedding and an untied lm_head. The card's
    "8.4B" is 1.06% under this total (about 8.49B), so nothing published compares."""
    v, h, i, layers, heads, kv, d = 131072, 4096, 14336, 34, 32, 8, 128
    attention = h * heads * d + 2 * h * kv * d + heads * d * h  # q_proj; k_proj, v_proj; o_proj
    layer = attention + 3 * h * i + 2 * h  # gate, up, down; input and post-attention norms
    return 2 * v * h + layers * layer + h


def _deepseek_v32_exp_by_hand():
    """DeepSeek-V3.2-Exp's 61 main layers from its config, term by term (transformers 5.23
    modeling_deepseek_v32): DeepSeek-V3's layer (latent attention: q_a 7168 -> 1536, q_b -> 128 heads
    of 192, kv_a -> 512 + 64, kv_b -> 128 x (128 + 128), o_proj; two latent norms, two layer norms;
    3 dense MLPs 18432 wide, 58 MoE layers of 256 experts 2048 wide, a router and a shared expert)
    plus every layer's indexer: wq_b 1536 -> 64 heads of 128, wk 7168 -> 128, k_norm (a LayerNorm,
    weight and bias), weights_proj 7168 -> 64. Untied embedding and lm_head, the final norm."""
    h, heads, v, e, i = 7168, 128, 129280, 256, 2048
    attention = h * 1536 + 1536 * heads * 192 + h * (512 + 64) + 512 * heads * (128 + 128) + heads * 128 * h
    indexer = 1536 * 64 * 128 + h * 128 + 2 * 128 + h * 64
    norms = 1536 + 512 + 2 * h
    moe = e * h + e * 3 * i * h + 3 * i * h
    dense = 3 * 18432 * h
    return 2 * v * h + h + 61 * (attention + indexer + norms) + 3 * dense + 58 * moe


HAND_COUNTED = {"gemma-4-e4b": _gemma4_e4b_by_hand, "command-r7b": _command_r7b_by_hand,
                "starcoder2-15b": _starcoder2_15b_by_hand, "ministral-3-8b": _ministral3_8b_by_hand,
                "deepseek-v3.2-exp": _deepseek_v32_exp_by_hand}


@pytest.mark.parametrize("name", sorted(HAND_COUNTED))
def test_hand_counted_totals(name):
    assert counts.total_params(get_model(name)) == HAND_COUNTED[name]()


def test_gemma4_counts_fail_on_a_wrong_kind():
    """Negative control: Gemma 4 E4B counted as if its KV-shared layers had their own k/v misses."""
    from planner.model.catalog import model_from_config

    cfg = get_model("gemma-4-e4b").hf_config()
    assert counts.total_params(model_from_config({**cfg, "num_kv_shared_layers": 0}, "x")) != _gemma4_e4b_by_hand()


def test_command_r7b_counts_fail_on_an_untied_head():
    """Negative control: Command R7B with its own lm_head (untied) misses the hand count."""
    from planner.model.catalog import model_from_config

    cfg = get_model("command-r7b").hf_config()
    assert counts.total_params(model_from_config({**cfg, "tie_word_embeddings": False}, "x")) != _command_r7b_by_hand()
    assert not _rounded(_command_r7b_by_hand(), "7B")  # why the card's 7B is not compared


def test_starcoder2_15b_counts_fail_on_a_tied_head():
    """Negative control: StarCoder2-15B with its lm_head tied to the embedding misses the hand count."""
    from planner.model.catalog import model_from_config

    cfg = get_model("starcoder2-15b").hf_config()
    assert counts.total_params(model_from_config({**cfg, "tie_word_embeddings": True}, "x")) != _starcoder2_15b_by_hand()
    assert not _rounded(_starcoder2_15b_by_hand(), "15B")  # why the card's 15B is not compared


def test_ministral3_counts_fail_on_a_wrong_tying():
    """Negative control: with the 8B's lm_head tied (as the 3B's is) the count misses the hand
    count by the head's 131072 x 4096, and the 3B untied misses the card's 3.4B."""
    from planner.model.catalog import model_from_config

    cfg = get_model("ministral-3-8b").hf_config()
    tied = counts.total_params(model_from_config({**cfg, "tie_word_embeddings": True}, "x"))
    assert tied == _ministral3_8b_by_hand() - 131072 * 4096
    small = get_model("ministral-3-3b").hf_config()
    assert not _rounded(counts.total_params(model_from_config({**small, "tie_word_embeddings": False}, "x")), "3.4B")


def test_a_near_total_can_fail():
    """Llama 4's totals (109B, 400B on the model card) hold the decoder and the vision tower: the
    decoder alone, or Maverick with a dense MLP in every layer, misses them."""
    maverick, vision = get_model("llama-4-maverick"), _entry("llama-4-maverick")["vision_params"]
    assert _near(counts.total_params(maverick) + vision, "400B", within=0.005)
    assert not _near(counts.total_params(get_model("llama-4-scout")), "109B", within=0.005)
    from planner.model.catalog import model_from_config

    every_layer_moe = model_from_config({**maverick.hf_config(), "interleave_moe_layer_step": 1}, "m")
    assert not _near(counts.total_params(every_layer_moe) + vision, "400B", within=0.005)


def test_a_rounded_total_can_fail():
    assert _rounded(3_030_371_328, "3.03B") and not _rounded(3_040_371_328, "3.03B")
    assert _rounded(1_026_408_209_408, "1T") and not _rounded(1_526_408_209_408, "1T")
    assert _near(352_797_814_784, "355B") and not _near(340_000_000_000, "355B")


# DeepSeek-V3: the model card's 671B is the main model (61 layers), its 14B MTP module apart;
# the planner counts the main model exactly as transformers builds it, one MoE layer here:
# 4 latent-attention Linears + o_proj, two latent norms, two layer norms; router, 256 experts,
# the shared expert
def test_deepseek_v3_main_model_by_hand():
    m = get_model("deepseek-v3")
    h, heads, v, e, i = 7168, 128, 129280, 256, 2048
    attention = h * 1536 + 1536 * heads * 192 + h * (512 + 64) + 512 * heads * (128 + 128) + heads * 128 * h
    norms = 1536 + 512 + 2 * h
    moe = e * h + e * 3 * i * h + 3 * i * h
    dense = 3 * 18432 * h
    assert counts.total_params(m) == 2 * v * h + h + 61 * (attention + norms) + 3 * dense + 58 * moe
    assert round(counts.total_params(m) / 1e9) == 671


def test_deepseek_v32_is_deepseek_v3_plus_its_indexers():
    """DeepSeek-V3.2-Exp's main model is DeepSeek-V3's (671B, the card's main-model figure) and 61
    indexers of 13,959,424 parameters; the card's 685B adds the multi-token-prediction module, as
    DeepSeek-V3's does (negative control: without the indexer the hand count is missed)."""
    from planner.model.catalog import model_from_config

    m = get_model("deepseek-v3.2-exp")
    assert counts.total_params(m) - counts.total_params(get_model("deepseek-v3")) == 61 * 13_959_424
    assert round(counts.total_params(m) / 1e9) == 672
    as_v3 = model_from_config(dict(m.hf_config(), model_type="deepseek_v3"), "no-indexer")
    assert counts.total_params(as_v3) != _deepseek_v32_exp_by_hand()


def test_negative_control_a_wrong_config_misses_the_total():
    from planner.model.catalog import model_from_config

    cfg = get_model("7b").hf_config()
    cfg["intermediate_size"] = 11008 + 1
    assert counts.total_params(model_from_config(cfg, "broken")) != 6_738_415_616


def test_llama2_7b_lora_and_dora_rank8_all_linear():
    m = get_model("7b")
    assert counts.adapter_params(m, TrainSpec(method="lora", rank=8)) == 19_988_480
    assert counts.adapter_params(m, TrainSpec(method="dora", rank=8)) == 21_348_352
    assert counts.adapter_params(m, TrainSpec(method="rslora", rank=8)) == 19_988_480


def test_qwen25_05b_rank8_on_attention():
    m = get_model("qwen2.5-0.5b")
    t = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert counts.adapter_params(m, TrainSpec(method="lora", rank=8, target_modules=t)) == 1_081_344
    assert counts.adapter_params(m, TrainSpec(method="dora", rank=8, target_modules=t)) == 1_130_496


def test_tiny_hand_counts(tiny):
    # embed 10*8 + lm_head 10*8 + 2 layers * (q 64 + k 32 + v 32 + o 64 + 3 * 128 + norms 16) + final 8
    assert counts.total_params(tiny) == 80 + 80 + 2 * (64 + 32 + 32 + 64 + 384 + 16) + 8 == 1352
    # r=2: q 2*16 + k 2*12 + v 2*12 + o 2*16 + gate/up/down 3 * 2*24 = 256 per layer
    assert counts.adapter_params(tiny, TrainSpec(method="lora", rank=2)) == 512
    # DoRA adds out_features per Linear: 8 + 4 + 4 + 8 + 16 + 16 + 8 = 64 per layer
    assert counts.adapter_params(tiny, TrainSpec(method="dora", rank=2)) == 640
    assert counts.trainable_params(tiny, TrainSpec(method="full")) == 1352


def test_unknown_target_and_oversized_rank_are_refused(tiny):
    with pytest.raises(ValueError, match="did you mean 'q_proj'"):
        counts.adapter_params(tiny, TrainSpec(method="lora", target_modules=("q_prj",)))
    with pytest.raises(ValueError, match="larger than k_proj"):
        targets.check_rank(tiny, TrainSpec(method="lora", rank=5))
    targets.check_rank(tiny, TrainSpec(method="lora", rank=4))  # min(8, 4) = 4 is allowed
