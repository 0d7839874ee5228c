"""Small model configs for the probe tests, and session-scoped imports (peft and
bitsandbytes take seconds to import)."""
import json

import pytest

from planner.model.catalog import model_from_config
from probes import quiet_libraries

# Llama layout with grouped-query attention (4 heads, 2 KV heads), 2 layers, hidden 128.
LLAMA_TINY = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512,
    "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
}
# Qwen2 layout: q/k/v biases, tied embeddings, hidden 64 (4-bit biases and tying).
QWEN_TINY = {
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 384,
    "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu",
}


@pytest.fixture(scope="session")
def torch_stack():
    """Import the heavy libraries once per session; keep their log notices quiet."""
    quiet_libraries()
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="session")
def llama_tiny(torch_stack):
    return model_from_config(dict(LLAMA_TINY), "llama-tiny")


@pytest.fixture(scope="session")
def qwen_tiny(torch_stack):
    return model_from_config(dict(QWEN_TINY), "qwen-tiny")


@pytest.fixture(scope="session")
def llama_tiny_config(tmp_path_factory):
    """LLAMA_TINY as a config.json file (what `probe --model PATH` reads)."""
    path = tmp_path_factory.mktemp("llama-tiny") / "config.json"
    path.write_text(json.dumps(LLAMA_TINY))
    return path
