"""The hybrid families (planner.model.hybrids): layer kinds, the mixers' parameters, what
all-linear adapts, the kernels setting and bad input. Expected values are worked out by hand
from transformers 5.23's modeling files (GraniteMoeHybridMambaLayer, NemotronHBlock,
Lfm2ShortConv, Lfm2MLP)."""
import json

import pytest
from click.testing import CliRunner

from planner import TrainSpec, get_model, plan
from planner.cli.command import main as plan_main
from planner.memory import mixers
from planner.memory import terms as C
from planner.model import counts, inventory, targets
from planner.model.catalog import CatalogError, model_from_config

GRANITE = dict(model_type="granitemoehybrid", vocab_size=512, hidden_size=128, intermediate_size=64,
               shared_intermediate_size=96, num_local_experts=0, num_experts_per_tok=0, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, layer_types=["mamba", "attention", "mamba"],
               mamba_n_heads=8, mamba_d_head=32, mamba_d_state=16, mamba_n_groups=1, mamba_d_conv=4,
               mamba_expand=2, mamba_chunk_size=32, position_embedding_type="nope", tie_word_embeddings=True)


def granite(**kw):
    return model_from_config({**GRANITE, **kw}, "tiny-granite-h")


def test_granite_kinds_and_mamba_layout():
    m = granite()
    assert [(k.name, k.indices) for k in m.kinds] == [("mamba2", (0, 2)), ("attention", (1,))]
    mamba = m.kinds[0].layer
    # in_proj: z (256) + xBC (256 + 2*16) + dt (8) = 552; out_proj 256 -> 128
    assert [(lin.name, lin.role, lin.in_features, lin.out_features) for lin in mamba.linears] == [
        ("mamba.in_proj", "ssm_in", 128, 552), ("mamba.out_proj", "ssm_out", 256, 128),
        ("shared_mlp.input_linear", "gate_up", 128, 192), ("shared_mlp.output_linear", "down", 96, 128)]
    assert m.intermediate_size == 96  # no experts: the shared MLP is the MLP


def test_mamba_parameters_in_the_inventory():
    tensors = {t.path: (t.shape, t.layers) for t in inventory.base_tensors(granite()) if "mamba." in t.path}
    assert tensors["layers.*.mamba.conv1d.weight"] == ((288, 1, 4), 2)
    assert tensors["layers.*.mamba.conv1d.bias"] == ((288,), 2)
    assert tensors["layers.*.mamba.A_log"] == ((8,), 2) and tensors["layers.*.mamba.norm.weight"] == ((256,), 2)
    # hand count: embed 512*128; per Mamba layer in_proj 128*552 + out_proj 256*128 + conv 288*4 + 288
    # + 3*8 + 256; attention 128*128 + 2*128*64 + 128*128; every layer MLP 128*192 + 96*128 + 2 norms
    mamba = 128 * 552 + 256 * 128 + 288 * 5 + 24 + 256
    attn = 2 * 128 * 128 + 2 * 128 * 64
    per_layer = 128 * 192 + 96 * 128 + 2 * 128
    assert counts.total_params(granite()) == 512 * 128 + 2 * mamba + attn + 3 * per_layer + 128


def test_qlora_packs_in_and_out_proj_not_the_conv():
    t = inventory.inventory(granite(), TrainSpec(method="qlora"), 2)
    packed = {x.path for x in t if x.treatment == "4bit"}
    assert "layers.*.mamba.in_proj.weight" in packed and "layers.*.mamba.out_proj.weight" in packed
    assert not any("conv1d" in p or "A_log" in p for p in packed)


def test_all_linear_adapts_in_and_out_proj_and_a_name_of_one_kind_is_known():
    m = granite()
    views = m.by_kind()
    names = [lin.name for lin in targets.targeted_linears(views[0], ("all-linear",))]
    assert names[:2] == ["mamba.in_proj", "mamba.out_proj"]
    assert targets.targeted_linears(views[0], ("q_proj",)) == ()  # an attention name on a Mamba kind
    with pytest.raises(ValueError, match="no module 'conv1d'"):
        targets.targeted_linears(m, ("conv1d",))


def test_nemotron_h_pattern_kinds():
    cfg = dict(model_type="nemotron_h", vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, hybrid_override_pattern="M-*M",
               mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4)
    m = model_from_config(cfg, "tiny-nemotron-h")
    assert [(k.name, k.indices) for k in m.kinds] == [("mamba2", (0, 3)), ("mlp", (1,)), ("attention", (2,))]
    mlp = m.kinds[1].layer
    assert [(lin.role, lin.in_features, lin.out_features) for lin in mlp.linears] == [("fc_in", 128, 320),
                                                                                      ("down", 320, 128)]
    assert m.kinds[0].layer.linears[0].out_features == 2 * 128 + 2 * 2 * 16 + 8


def test_lfm2_mlp_width_and_kinds():
    m = get_model("lfm2-350m")
    assert m.intermediate_size == 4608  # int(2 * 6656 / 3) = 4437, rounded up to 256
    assert [k.name for k in m.kinds] == ["short_conv", "attention"]
    conv = m.kinds[0].layer
    assert [(lin.role, lin.out_features) for lin in conv.linears[:2]] == [("conv_in", 3072), ("conv_out", 1024)]


@pytest.mark.parametrize("field,value,named", [
    ("layer_types", ["mamba", "moe", "mamba"], "'moe'"),
    ("layer_types", ["mamba", "sliding_window", "mamba"], "'sliding_window'"),
])
def test_an_unknown_layer_type_is_named(field, value, named):
    with pytest.raises(CatalogError, match=named):
        granite(**{field: value})


def test_nemotron_experts_layers_are_named_and_refused(tmp_path):
    cfg = dict(model_type="nemotron_h", vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, hybrid_override_pattern="ME*",
               mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    result = CliRunner().invoke(plan_main, ["--model", str(path), "--gpu", "h100", "--method", "lora"])
    assert result.exit_code == 2
    assert "layer type 'moe'" in result.output and len(result.output.strip().splitlines()) == 1


def test_fused_kernels_on_a_model_without_them_exit_2():
    result = CliRunner().invoke(plan_main, ["--model", "7b", "--gpu", "h100", "--kernels", "fused"])
    assert result.exit_code == 2 and "has no layer with a fused kernel" in result.output
    with pytest.raises(ValueError, match="unknown kernels"):
        TrainSpec(kernels="triton")


def test_the_plan_says_which_kernels():
    for kernels, said in (("auto", "fused kernels"), ("torch", "torch fallback"), ("fused", "fused kernels")):
        p = plan("lfm2-350m", "h100", TrainSpec(kernels=kernels))
        assert any(said in n for n in p.notes), kernels


def test_fused_mamba_keeps_less_than_the_torch_path():
    """The fused kernel keeps zxbcdt, out_x and rstd (hand: T*(552 + 256)*2 + T*4 at T 64); the
    torch path's chunk tensors are more; a negative control: the two paths differ."""
    m = granite().by_kind()[0]
    prec = C.precision(TrainSpec(dtype="bf16"), "bf16")
    train = TrainSpec(seq_len=64, kernels="fused")
    assert mixers.mixer_saved(m, train, prec) == 64 * (552 + 256) * 2 + 64 * 4
    assert mixers.mixer_saved(m, train.with_(kernels="torch"), prec) == 816_546  # tracer, saved-tensor hooks
