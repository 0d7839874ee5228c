"""The Gated DeltaNet hybrids (Qwen3.5, Qwen3.5-MoE, Qwen3-Next): their layer kinds, parameters,
kernel paths and bad input, torch-free. Traced checks are in tests/probes/test_deltanet_traced.py."""
import json

import pytest
from click.testing import CliRunner

from planner import TrainSpec, get_model, plan
from planner.cli.command import main
from planner.model import counts
from planner.model.catalog import CatalogError, model_from_config
from planner.memory import deltanet, terms

TINY = dict(model_type="qwen3_5_text", vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_key_head_dim=16,
            linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, max_position_embeddings=4096)


def _tiny(**changes):
    return model_from_config({**TINY, **changes}, "tiny-qwen3.5")


def test_kinds_follow_full_attention_interval_and_layer_types():
    model = _tiny()
    assert [(k.name, k.indices) for k in model.kinds] == [("linear_attention", (0, 1, 2)), ("full_attention", (3,))]
    types = ["full_attention", "linear_attention", "full_attention", "linear_attention"]
    model = _tiny(layer_types=types)
    assert [(k.name, k.indices) for k in model.kinds] == [("linear_attention", (1, 3)), ("full_attention", (0, 2))]
    assert [k.name for k in _tiny(full_attention_interval=2).kinds] == ["linear_attention", "full_attention"]
    assert _tiny(full_attention_interval=2).kinds[1].indices == (1, 3)


def test_deltanet_linears_and_gated_q_proj():
    linear, full = (k.layer for k in _tiny().kinds)
    # Qwen3_5GatedDeltaNet.__init__: in_proj_qkv h -> 2*16*2 + 4*16, in_proj_z h -> 64, b and a h -> 4 heads
    shapes = {lin.name: (lin.in_features, lin.out_features, lin.role) for lin in linear.linears}
    assert shapes["linear_attn.in_proj_qkv"] == (64, 128, "delta_qkv")
    assert shapes["linear_attn.in_proj_z"] == (64, 64, "delta_z")
    assert shapes["linear_attn.in_proj_b"] == (64, 4, "delta_b")
    assert shapes["linear_attn.in_proj_a"] == (64, 4, "delta_a")
    assert shapes["linear_attn.out_proj"] == (64, 64, "delta_out")
    assert not linear.norms_at("q", "k")  # no qk-norm in a DeltaNet layer
    q = full.by_role("q")[0]
    assert (q.in_features, q.out_features) == (64, 2 * 4 * 16)  # the output gate doubles q_proj
    assert full.traits.output_gate and not linear.traits.output_gate
    fused = model_from_config({**TINY, "model_type": "qwen3_next", "num_experts": 4, "num_experts_per_tok": 2,
                               "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8}, "tiny-next")
    names = [lin.name for lin in fused.kinds[0].layer.linears]
    assert names[:3] == ["linear_attn.in_proj_qkvz", "linear_attn.in_proj_ba", "linear_attn.out_proj"]


def test_hand_count_of_the_tiny_model():
    # by hand from modeling_qwen3_5.py: embed 512*64, lm_head 512*64, final norm 64; per layer two
    # norms (128) and an MLP 3*64*160; a DeltaNet layer: qkv 64*128, z 64*64, b and a 64*4 each,
    # out 64*64, conv1d 128*4, A_log and dt_bias 4 each, gated norm 16; the full layer: q 64*128,
    # k and v 64*32 each, o 64*64, q/k norms 16 each
    mlp, norms = 3 * 64 * 160, 128
    delta = 64 * 128 + 64 * 64 + 2 * 64 * 4 + 64 * 64 + 128 * 4 + 2 * 4 + 16
    full = 64 * 128 + 2 * 64 * 32 + 64 * 64 + 2 * 16
    total = 2 * 512 * 64 + 64 + 3 * (delta + mlp + norms) + (full + mlp + norms)
    assert counts.total_params(_tiny()) == total
    assert counts.total_params(_tiny(linear_conv_kernel_dim=3)) == total - 3 * 128  # a negative control


# the text decoders' totals as transformers builds them (AutoModelForCausalLM.from_config on the meta
# device, transformers 5.23), an independent count of the catalog's configs
TRANSFORMERS_TOTALS = {"qwen3.5-0.8b": 752_393_024, "qwen3.5-27b": 26_895_998_464,
                       "qwen3.5-35b-a3b": 34_660_610_688, "qwen3-next-80b-a3b": 79_674_391_296}


@pytest.mark.parametrize("name,total", sorted(TRANSFORMERS_TOTALS.items()))
def test_catalog_counts_equal_transformers(name, total):
    assert counts.total_params(get_model(name)) == total


def test_an_unknown_layer_type_is_refused_naming_it():
    types = ["linear_attention", "sliding_attention", "linear_attention", "full_attention"]
    with pytest.raises(CatalogError, match=r"layer_types\[1\] is 'sliding_attention'"):
        _tiny(layer_types=types)


def test_cli_unknown_layer_type_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({**TINY, "layer_types": ["linear_attention", "mamba", "linear_attention",
                                                       "full_attention"]}))
    result = CliRunner().invoke(main, ["--model", str(cfg), "--gpu", "t4"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "layer_types[1] is 'mamba'" in result.stderr


def test_kernels_are_validated_and_fused_needs_a_deltanet():
    with pytest.raises(ValueError, match="unknown kernels 'triton'"):
        TrainSpec(kernels="triton")
    with pytest.raises(ValueError, match="--kernels fused: llama-2-7b has no layer with a fused kernel"):
        plan("7b", "t4", TrainSpec(kernels="fused"))
    result = CliRunner().invoke(main, ["--model", "7b", "--gpu", "t4", "--kernels", "fused"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert plan("7b", "t4", TrainSpec(kernels="torch")).peak_allocated_bytes == plan("7b", "t4").peak_allocated_bytes


def test_each_plan_names_its_kernel_path():
    model = _tiny()
    fused = plan(model, "t4", TrainSpec(dtype="fp16"))
    torch_path = plan(model, "t4", TrainSpec(dtype="fp16", kernels="torch"))
    assert any("fused kernels" in n for n in fused.notes)
    assert any("torch fallbacks" in n for n in torch_path.notes)
    assert fused.settings["kernels"] == "auto" and torch_path.settings["kernels"] == "torch"
    # the torch path keeps its chunks' fp32 tensors: more than the fused kernels' saved sets
    assert torch_path.peak_allocated_bytes > fused.peak_allocated_bytes


def test_torch_path_grows_with_the_padded_chunks():
    """torch_chunk_gated_delta_rule pads the sequence to 64 positions: its chunk tables at 65
    tokens are those of 128, while the fused kernels' saved sets grow by one token's."""
    view = _tiny().by_kind()[0]
    prec = terms.precision(TrainSpec(), "bf16")

    def saved(seq, path):
        return deltanet.torch_saved(view, TrainSpec(seq_len=seq), prec) if path == "torch" else \
            deltanet.fused_saved(view, TrainSpec(seq_len=seq), prec)

    step_torch = saved(65, "torch") - saved(64, "torch")
    assert step_torch > 50 * (saved(64, "torch") - saved(63, "torch"))  # a new chunk, not one token
    assert saved(65, "fused") - saved(64, "fused") == saved(64, "fused") - saved(63, "fused")


def test_deltanet_time_terms_only_for_its_layers():
    from planner.time.timing import deltanet_work

    prec = terms.precision(TrainSpec(), "bf16")
    assert deltanet_work(get_model("7b"), TrainSpec(), prec) == []
    fused = deltanet_work(_tiny(), TrainSpec(seq_len=256), prec)
    torch_path = deltanet_work(_tiny(), TrainSpec(seq_len=256, kernels="torch"), prec)
    assert [w.term for w in fused] == ["deltanet/core"] * 2 and fused[0].layer and not fused[1].layer
    assert fused[0].flops == torch_path[0].flops and torch_path[0].nbytes > fused[0].nbytes
    # three DeltaNet layers of 256 tokens: conv 2*T*D*K + T*H*(4*64*dk + 2*64*dv + 6*dk*dv), by hand
    per_layer = 2 * 256 * 128 * 4 + 256 * 4 * (4 * 64 * 16 + 2 * 64 * 16 + 6 * 16 * 16)
    assert fused[0].flops == 3 * per_layer
