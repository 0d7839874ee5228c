"""Tiny configs of the architecture table's families, and the plans' settings, for the
layout tests (widths small enough to work out by hand)."""
from planner import TrainSpec
from planner.model.catalog import model_from_config

TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, max_position_embeddings=4096)


def spec(model_type, **fields):
    return model_from_config({"model_type": model_type, **TINY, **fields}, f"tiny-{model_type}")


def train(**kw):
    base = dict(method="lora", rank=8, batch_size=1, seq_len=40, dtype="bf16")
    base.update(kw)
    return TrainSpec(**base)


def layout(model):
    return [(lin.name, lin.role, lin.in_features, lin.out_features, lin.bias) for lin in model.linears]
