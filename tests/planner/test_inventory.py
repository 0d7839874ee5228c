"""The tensor inventory: one list of every parameter tensor, which every count sums.

The trained sum is checked against the LoRA / DoRA formulas written out per targeted Linear
(Hu et al. 2021: r * (in + out); Liu et al. 2024: + out for the magnitude), independent of
the inventory's shapes, for every catalog model and method; against peft's own count in
tests/validate/test_planner_counts.py.
"""
import pytest

from planner import TrainSpec, get_model, model_names
from planner.memory import terms as C
from planner.model import counts
from planner.model import inventory as inv
from planner.model.targets import UnsupportedMethod, targeted_linears, targeted_parameters, targeted_root_linears

METHODS = ("full", "lora", "rslora", "qlora", "dora", "qdora")


def formula_trained(model, train) -> int:
    """Trainable parameters by the papers' per-module formulas."""
    if train.method == "full":
        return counts.total_params(model)
    layers = 0
    for view in model.by_kind():  # kind by kind: Llama 4 Maverick's dense and MoE layers differ, Gemma 4's widths
        per_layer = sum(train.rank * (lin.in_features + lin.out_features) + (lin.out_features if train.is_dora else 0)
                        for lin in targeted_linears(view, train.target_modules))
        per_layer += sum(p.experts * p.rank * (p.in_features + p.out_features) for p in targeted_parameters(view, train))
        layers += view.num_layers * per_layer
    # Linears outside the layers (Gemma 4's per_layer_model_projection)
    layers += sum(train.rank * (lin.in_features + lin.out_features) + (lin.out_features if train.is_dora else 0)
                  for lin in targeted_root_linears(model, train.target_modules))
    return layers + len(train.modules_to_save) * model.vocab_size * model.hidden_size


@pytest.mark.parametrize("name", model_names())
def test_trained_sum_equals_the_formulas_for_every_model_and_method(name):
    model = get_model(name)
    checked = 0
    for method in METHODS:
        for saved in ((), ("lm_head",)):
            train = TrainSpec(method=method, rank=8, modules_to_save=saved)
            try:
                expected = formula_trained(model, train)
            except UnsupportedMethod:
                continue
            tensors = inv.inventory(model, train, 2)
            # (every trainable tensor, gradient or not: DeepSeek-V3.2's indexer gets none)
            assert sum(t.elements for t in tensors if t.requires_grad) == expected == counts.trainable_params(model, train)
            checked += 1
    assert checked >= 8


def test_every_base_tensor_once_and_the_total_is_the_published_count():
    """Llama-2-7B: the published 6,738,415,616, each base tensor once under full fine-tuning."""
    model = get_model("llama-2-7b")
    base = inv.base_tensors(model)
    assert sum(t.elements for t in base) == 6_738_415_616
    assert len({t.path for t in base}) == len(base)
    paths = {t.path: t for t in base}
    assert paths["layers.*.q_proj.weight"].shape == (4096, 4096) and paths["layers.*.q_proj.weight"].layers == 32
    assert paths["lm_head.weight"].kind == inv.ROOT and paths["lm_head.weight"].shape == (32000, 4096)


def test_mixture_of_experts_full_fine_tuning_trains_the_experts():
    """Qwen3-30B-A3B full fine-tuning with bitsandbytes' 8-bit AdamW: the experts and routers are
    trained tensors, so their states are counted: 2 bytes per parameter plus an fp32 absmax per
    256 (about 57 GiB for 30.5B parameters); the rule that left them out planned 2.89 GiB."""
    model = get_model("qwen3-30b-a3b")
    train = TrainSpec(method="full", optim="adamw_8bit")
    trained = inv.trained(inv.inventory(model, train, 2))
    experts = [t for t in trained if t.role == "experts"]
    assert [t.shape for t in experts] == [(128, 1536, 2048), (128, 2048, 768)]
    states = C.optimizer_states(model, train, C.precision(train, "bf16"))
    params = counts.trainable_params(model, train)
    assert params == 30_532_122_624
    assert 2 * params < states < 2 * params * 1.02
    # negative control: the trained tensors without the experts and routers give the old figure
    without = sum(t.layers * 2 * (t.numel + -(-t.numel // 256) * 4) if t.numel >= 4096 else t.layers * 8 * t.numel
                  for t in trained if t.role not in ("experts", "router"))
    assert states / without > 15 and round(without / 2**30, 2) == 2.89


def test_treatments_by_method():
    """QLoRA packs the decoder Linears to 4 bits and keeps every other base tensor in fp32; LoRA
    freezes them in the weight dtype; a modules_to_save copy takes its module's dtype."""
    model = get_model("llama-3.2-1b")
    q = inv.inventory(model, TrainSpec(method="qlora", modules_to_save=("lm_head",)), 2)
    assert {t.treatment for t in q if t.role == "linear"} == {"4bit"}
    assert {t.dtype_bytes for t in q if t.treatment == "frozen"} == {4}
    assert [t.dtype_bytes for t in q if t.treatment == "saved_copy"] == [4]
    lo = inv.inventory(model, TrainSpec(method="lora", modules_to_save=("lm_head",)), 2)
    assert {t.dtype_bytes for t in lo if t.treatment == "frozen"} == {2}
    assert [t.dtype_bytes for t in lo if t.treatment == "saved_copy"] == [2]
    assert {t.dtype_bytes for t in lo if t.treatment == "adapter"} == {4}
    # 4-bit storage: two codes per byte
    packed = [t for t in q if t.treatment == "4bit"]
    assert sum(t.stored_bytes for t in packed) == sum(t.layers * -(-t.numel // 2) for t in packed)


@pytest.mark.parametrize("name,expected", [
    # Llama: q/k/v/o and the input norm (transformers LlamaDecoderLayer); not the MLP or its norm
    ("llama-3.1-8b", {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "input_layernorm.weight"}),
    # gpt-oss: also the attention biases and the sinks; not the router or the experts
    ("gpt-oss-20b", {f"{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")}
     | {"self_attn.sinks", "input_layernorm.weight"}),
])
def test_attention_block_by_role(name, expected):
    """The first layer's attention block, which its backward reaches last: by role and site."""
    spec = get_model(name)
    kind = spec.kinds[0]
    tensors = inv.of_kind(inv.trained(inv.inventory(spec, TrainSpec(method="full"), 2)), kind.name)
    got = {t.path.removeprefix("layers.*.") for t in inv.attention_block(kind.layer, tensors)}
    assert got == expected
