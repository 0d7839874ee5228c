"""The builder's model description: what it takes from a planner spec or a bare config."""
import pytest

from planner import get_model, model_names
from planner.model.catalog import UnknownArchitecture


def test_from_spec_keeps_what_the_measurements_read(torch_stack):
    from probes.build import from_spec

    for name in model_names():
        spec = get_model(name)
        model = from_spec(spec)
        assert model.config == spec.hf_config() and model.vocab_size == spec.vocab_size
        assert model.attention_shape() == (spec.num_heads, spec.num_kv_heads, spec.head_dim)
        assert model.eager == spec.eager_attention  # Gemma-2: softcapping, eager attention
    assert from_spec(get_model("gemma-2-2b")).attn_implementation == "eager"
    assert from_spec(get_model("7b")).attn_implementation == "sdpa"


def test_from_unknown_takes_the_config_of_a_decoder(torch_stack):
    from probes.build import from_unknown

    config = {"model_type": "starcoder2", "vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4}
    model = from_unknown(UnknownArchitecture("x", "sc2", config))
    assert (model.name, model.vocab_size, model.attn_implementation) == ("sc2", 100, "sdpa")
    assert model.attention_shape() == (4, 4, 8)
    soft = from_unknown(UnknownArchitecture("x", "g", {**config, "attn_logit_softcapping": 50.0}))
    assert soft.attn_implementation == "eager"
    with pytest.raises(ValueError, match="vocab_size"):
        from_unknown(UnknownArchitecture("x", "sc2", {**config, "vocab_size": None}))


def test_validate_builds_its_tiny_model_with_the_probes_builder(torch_stack):
    from probes.build import random_init
    from validate import models as M

    built = M.build_tiny(seed=3)
    direct = random_init(M.tiny_model(), torch_stack.float32, "cpu", seed=3)
    assert built.config._attn_implementation == "eager"
    for (name, a), (_, b) in zip(built.state_dict().items(), direct.state_dict().items()):
        assert torch_stack.equal(a, b), name


TINY_ROUTED = dict(pad_token_id=0, vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1)


@pytest.mark.parametrize("model_type,extra,expected", [
    # Llama 4's and Phi-3.5-MoE's routers subclass nn.Linear and return a tuple: left out
    ("llama4_text", dict(intermediate_size_mlp=96, interleave_moe_layer_step=2), ["model.layers.1.feed_forward.router"]),
    ("phimoe", {}, ["model.layers.0.mlp.router", "model.layers.1.mlp.router"]),
    # negative control: Mixtral's router is no nn.Linear, and its Linears and lm_head return tensors
    ("mixtral", {}, []),
])
def test_routing_linears_are_the_tuple_returning_routers(torch_stack, model_type, extra, expected):
    from planner.model.catalog import model_from_config
    from probes.build import random_init, routing_linears

    spec = model_from_config({"model_type": model_type, **TINY_ROUTED, **extra}, f"tiny-{model_type}")
    model = random_init(spec, torch_stack.bfloat16, "meta")
    assert list(routing_linears(model)) == expected
