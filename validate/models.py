"""Small models for the invariants: tiny random Llamas (CPU), 4-bit copies, meta catalog models.

Every model is built by the probes' builder (:mod:`probes.build`), so that the validator
checks the models `probe` measures: the same config handling, random init, local
safetensors loading with the same BitsAndBytesConfig, the same peft LoraConfig.

Builders are cached per process (the CLI run and a pytest session share them), so every
function that hands out a model others might change returns a deep copy. Nothing here
touches the network: models are built from a config with random init, and the 4-bit
model is saved locally as safetensors and loaded back through bitsandbytes.
"""
from __future__ import annotations

import atexit
import copy
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

# A Llama with every Linear shape different (q/o 64x64, k/v 64->32, gate/up 64->96,
# down 96->64), two layers, small vocabulary: runs a forward in milliseconds.
TINY_LLAMA = dict(
    model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=96, hidden_size=64,
    intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
BATCH, SEQ = 2, 8
ADAPTER = "default"


def quiet() -> None:
    """Silence the deprecation and capability chatter of the torch stack (not errors)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def tiny_model():
    """TINY_LLAMA for the builder, with eager attention: deterministic, the same kernel for
    every dtype."""
    from probes.build import ProbeModel

    return ProbeModel(name="validate-tiny-llama", config=dict(TINY_LLAMA), attn_implementation="eager",
                      vocab_size=TINY_LLAMA["vocab_size"])


def build_tiny(seed: int = 0, dtype: torch.dtype = torch.float32):
    """A fresh tiny Llama with random weights from ``seed`` (drawn in fp32, then cast), eval mode."""
    from probes.build import random_init

    return random_init(tiny_model(), torch.float32, "cpu", seed=seed).to(dtype).eval()


def input_ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randint(0, TINY_LLAMA["vocab_size"], (BATCH, SEQ), generator=g)


def logits(model, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids(seed)).logits


def lora_config(method: str = "lora", rank: int = 8, alpha: float | None = None,
                targets="all-linear", parameters: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
    """The probes' peft LoraConfig for a planner method name (lora, rslora, dora; q* the same
    adapters); ``targets``: "all-linear" or a list of module names; ``parameters``: fused
    parameters to adapt (peft's target_parameters); ``exclude``: modules left out
    (probes.build.routing_linears)."""
    from planner import TrainSpec
    from probes.build import lora_config as probe_lora_config

    target_modules = (targets,) if isinstance(targets, str) else tuple(targets)
    return probe_lora_config(TrainSpec(method=method, rank=rank, alpha=alpha, target_modules=target_modules,
                                       target_parameters=tuple(parameters)), exclude)


@lru_cache(maxsize=None)
def _adapted(method: str, seed: int, dtype: torch.dtype):
    from peft import get_peft_model

    base = build_tiny(seed, dtype)
    base_logits = logits(base)
    model = get_peft_model(copy.deepcopy(base), lora_config(method)).eval()
    return base, base_logits, model


def adapted(method: str = "lora", seed: int = 0, dtype: torch.dtype = torch.float32):
    """(base model, base logits, peft model at init): copies, safe to change."""
    base, base_logits, model = _adapted(method, seed, dtype)
    return copy.deepcopy(base), base_logits.clone(), copy.deepcopy(model)


def adapter_layers(model):
    """(name, module) of every peft LoRA layer of a model."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def perturb(model, seed: int, std: float = 0.02, magnitude: bool = True):
    """Give every adapter a random non-zero B (and A, and DoRA magnitude) in place."""
    g = torch.Generator().manual_seed(20_000 + seed)
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for weight in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight):
                weight.add_(torch.randn(weight.shape, generator=g, dtype=torch.float32).to(weight.dtype) * std)
            if magnitude and ADAPTER in layer.lora_magnitude_vector:
                m = layer.lora_magnitude_vector[ADAPTER].weight
                m.mul_(1 + 0.1 * torch.randn(m.shape, generator=g).to(m.dtype))
    return model


# ---------------------------------------------------------------- 4-bit

@dataclass(frozen=True)
class Saved:
    """A tiny model saved as safetensors: its folder and its original fp32 Linear weights."""

    path: Path
    weights: dict  # module name -> fp32 weight before quantization


@lru_cache(maxsize=None)
def saved_tiny(seed: int = 0) -> Saved:
    folder = Path(tempfile.mkdtemp(prefix="validate-tiny-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    model = build_tiny(seed)
    model.save_pretrained(folder, safe_serialization=True)
    weights = {name: module.weight.detach().clone() for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name != "lm_head"}
    return Saved(folder, weights)


def config_json_path(seed: int = 0) -> Path:
    """The saved tiny model's config.json (what the planner reads for a local model)."""
    path = saved_tiny(seed).path / "config.json"
    json.loads(path.read_text())  # fail early if it is not JSON
    return path


@lru_cache(maxsize=None)
def _four_bit(seed: int, quant_type: str, double_quant: bool):
    """The saved tiny model loaded as `probe --weights` loads QLoRA's base, in fp32."""
    from planner import TrainSpec
    from probes import build

    train = TrainSpec(method="qlora", quant_type=quant_type, double_quant=double_quant, dtype="fp32")
    model = build.load_base(tiny_model(), train, build.resolve_precision(train, "cpu"), "cpu",
                            weights=saved_tiny(seed).path)
    build.disable_bnb_cpu_fast_path(model)
    return model.eval()


def four_bit(seed: int = 0, quant_type: str = "nf4", double_quant: bool = True):
    """The saved tiny model loaded in 4 bits through transformers + bitsandbytes (shared: do not change)."""
    return _four_bit(seed, quant_type, double_quant)


def linear4bit_layers(model):
    import bitsandbytes as bnb

    return [(name, module) for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)]


@lru_cache(maxsize=None)
def _qdora(seed: int):
    from peft import get_peft_model

    # A private 4-bit load: peft changes the model it wraps, so never wrap the shared one.
    model = _four_bit.__wrapped__(seed, "nf4", True)
    return get_peft_model(model, lora_config("qdora")).eval()


def qdora(seed: int = 0):
    """A QDoRA model: the 4-bit tiny model with DoRA adapters at init (shared: do not change)."""
    return _qdora(seed)


# ---------------------------------------------------------------- meta catalog models

def meta_model(name: str):
    """A catalog model (planner.get_model name, or "name@NL" cut to N decoder layers) built on
    the meta device: shapes, no memory."""
    from probes.build import random_init

    from .baselines import spec_for

    return random_init(spec_for(name), torch.float32, "meta")
