"""Model and GPU catalogs: aliases, HF ids and local config.json files.

All file reading of the planner happens here. Errors are :class:`CatalogError` with one
clear line and, where it helps, the closest known names.
"""
from __future__ import annotations

import difflib
import json
from functools import lru_cache
from pathlib import Path

import data

from planner.model.architectures import (SUPPORTED_MODEL_TYPES, TABLE, Dims, LayoutError, UnknownLayerKind, check_known,
                                        describe, dropout_note, per_layer_input, NotPlannedLayout)
from planner.model.specs import GpuSpec, ModelSpec

MIB = 1 << 20



class CatalogError(ValueError):
    """Unknown model or GPU, or a config.json the planner cannot read."""


class UnknownArchitecture(CatalogError):
    """A readable decoder config.json whose model_type the architecture table lacks, or whose
    layers it does not plan yet (architectures.NotPlannedLayout: Gemma 4 kinds of unequal widths).

    ``config`` holds the config's fields, so that a caller which can build any model from its
    config (``probe --device fake``) can still go on without the planner.
    """

    def __init__(self, message: str, name: str, config: dict):
        super().__init__(message)
        self.name = name
        self.config = config


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


@lru_cache(maxsize=None)
def _models_file() -> dict:
    return json.loads(data.path("models.json").read_text())


@lru_cache(maxsize=None)
def _gpus_file() -> dict:
    return json.loads(data.path("gpus.json").read_text())


def model_names() -> list[str]:
    """Canonical names of the catalog models, in catalog order."""
    return [m["name"] for m in _models_file()["models"]]


def gpu_names() -> list[str]:
    """Canonical names of the catalog GPUs, in catalog order."""
    return [g["name"] for g in _gpus_file()["gpus"]]


def _model_index() -> dict[str, dict]:
    index = {}
    for entry in _models_file()["models"]:
        for key in [entry["name"], entry["hf_id"], *entry["aliases"]]:
            index[key.lower()] = entry
    return index


def _require_int(config: dict, key: str, source: str) -> int:
    value = config.get(key)
    if value is None:
        raise CatalogError(f"{source}: config.json lacks the field {key!r}, which the architecture table needs")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CatalogError(f"{source}: config field {key!r} must be a positive integer, got {value!r}")
    return value


# Common model types that are not decoder-only language models, for configs that do not
# declare their architectures (the planner does not import transformers to ask it).
NOT_DECODERS = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "albert",
    "modernbert", "t5", "mt5", "umt5", "bart", "mbart", "pegasus", "vit", "clip", "clip_vision_model",
    "siglip", "siglip_vision_model", "dinov2", "whisper", "wav2vec2", "hubert",
})


def _not_a_decoder(config: dict) -> str:
    """Why a config is not a decoder-only causal LM, or "" (by its own declarations: the
    planner does not import transformers)."""
    if "model_type" not in config:
        return "config has no 'model_type' field"
    if config["model_type"] in NOT_DECODERS:
        return f"model_type {config['model_type']!r} is not a decoder-only language model"
    if config.get("is_encoder_decoder"):
        return f"model_type {config['model_type']!r} is an encoder-decoder"
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and not any(str(a).endswith("ForCausalLM") for a in archs):
        return f"architectures {', '.join(map(str, archs))} are not decoder-only causal LMs (no *ForCausalLM)"
    return ""


# Model types that ship remote code for a layout transformers builds under another type (never
# run): Kimi-K2's config says "kimi_k2" and its architectures DeepseekV3ForCausalLM, DeepSeek-V3's
# layout (64 heads, 384 experts), which transformers' own deepseek_v3 classes build.
MODEL_TYPE_ALIASES = {"kimi_k2": "deepseek_v3"}


def model_from_config(config: dict, name: str, hf_id: str | None = None,
                      published_params: int | None = None) -> ModelSpec:
    """Build a :class:`ModelSpec` from the fields of an HF config.json, through the
    architecture table (:mod:`planner.model.architectures`)."""
    if not isinstance(config, dict):
        raise CatalogError(f"{name}: a config.json must hold a JSON object")
    model_type = config.get("model_type")
    if model_type in MODEL_TYPE_ALIASES:  # a remote-code model type whose layout an entry has
        config = {**config, "model_type": MODEL_TYPE_ALIASES[model_type]}
        model_type = config["model_type"]
    text = config.get("text_config")
    if model_type not in TABLE and isinstance(text, dict) and text.get("model_type") in TABLE:
        # a multimodal checkpoint (Gemma-3 4B and up): plan its text decoder, as Gemma3ForCausalLM loads it
        return model_from_config({"architectures": [], **text}, name, hf_id, published_params)
    not_decoder = _not_a_decoder(config)
    if not_decoder:
        raise CatalogError(f"{name}: {not_decoder}; the planner plans decoder-only causal language models")
    arch = TABLE.get(model_type)
    if arch is None:
        raise UnknownArchitecture(
            f"{name}: the planner's architecture table has no entry for model_type {model_type!r} "
            f"(it has {', '.join(SUPPORTED_MODEL_TYPES)}); `probe --device fake --model CONFIG` traces "
            "any decoder transformers can build, exactly", name, config)
    vocab = _require_int(config, "vocab_size", name)
    hidden = _require_int(config, "hidden_size", name)
    inter = _require_int(config, arch.intermediate_field, name)
    layers = _require_int(config, "num_hidden_layers", name)
    heads = _require_int(config, "num_attention_heads", name)
    kv_heads = config.get("num_key_value_heads") or heads
    if not isinstance(kv_heads, int) or kv_heads < 1 or heads % kv_heads:
        raise CatalogError(f"{name}: num_key_value_heads {kv_heads!r} must divide num_attention_heads {heads}")
    head_dim = (config.get("head_dim") or (arch.head_dim_field and config.get(arch.head_dim_field))
                or arch.head_dim_default or hidden // heads)  # the family's config default
    if not isinstance(head_dim, int) or head_dim < 1:
        raise CatalogError(f"{name}: head_dim {head_dim!r} must be a positive integer")
    if arch.hybrid:
        from planner.model.hybrids import intermediate

        inter = intermediate(arch, config, inter)
    dims = Dims(hidden=hidden, intermediate=inter, heads=heads, kv_heads=kv_heads, head_dim=head_dim, layers=layers)
    return ModelSpec(
        name=name,
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", arch.tie_default)),
        kinds=_describe(arch, config, dims, name),
        max_position_embeddings=int(config.get("max_position_embeddings") or 4096),
        hf_id=hf_id,
        published_params=published_params,
        lm_head_bias=bool(arch.lm_head_bias_field and config.get(arch.lm_head_bias_field)),
        config_json=json.dumps(config, sort_keys=True),
        notes=tuple(n for n in (dropout_note(arch, config),) if n),
        **_per_layer_inputs(arch, config, name),
    )


def _per_layer_inputs(arch, config: dict, name: str) -> dict:
    """Gemma 4's per-layer input widths (ModelSpec.per_layer_input, per_layer_vocab); none elsewhere."""
    if arch.layout != "gemma4":
        return {}
    try:
        p, vocab = per_layer_input(config)
    except LayoutError as exc:
        raise CatalogError(f"{name}: {exc}") from None
    return {"per_layer_input": p, "per_layer_vocab": vocab}


def _describe(arch, config: dict, dims: Dims, name: str):
    try:
        kinds = describe(arch, config, dims)
        check_known(kinds)
        return kinds
    except NotPlannedLayout as exc:  # the tracer measures what the table cannot plan yet
        raise UnknownArchitecture(f"{name}: {exc}", name, config) from None
    except (LayoutError, UnknownLayerKind) as exc:
        raise CatalogError(f"{name}: {exc}") from None


@lru_cache(maxsize=None)
def _catalog_model(key: str) -> ModelSpec:
    entry = _model_index()[key]
    return model_from_config(entry["config"], entry["name"], entry["hf_id"], entry["published_params"])


def get_model(name: str, revision: str | None = None) -> ModelSpec:
    """A catalog alias ("7b"), a catalog HF id ("meta-llama/Llama-2-7b-hf"), a path to a
    local HF config.json (or to a folder holding one), or any Hub model id ("ORG/NAME", at
    ``revision``, default main: planner.model.hub, which imports huggingface_hub only then)."""
    key = name.strip().lower()
    if key in _model_index() and not (revision and "/" in key):
        return _catalog_model(key)
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{name}: not a readable JSON config ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(config, dict):
            raise CatalogError(f"{name}: a config.json must hold a JSON object")
        return model_from_config(config, path.parent.name if path.name == "config.json" else path.stem)
    from .hub import is_repo_id

    if is_repo_id(name.strip()):
        from .hub import resolve

        return resolve(name.strip(), revision)
    if "/" in name or name.endswith(".json"):
        raise CatalogError(f"unknown model {name!r}: not a Hub model id (ORG/NAME) and no such config.json"
                           + _suggest(name.split("/")[-1], list(_model_index())))
    raise CatalogError(f"unknown model {name!r}{_suggest(name, list(_model_index()))}; "
                       "see `plan --list-models`")


def _gpu_index() -> dict[str, dict]:
    index = {}
    for entry in _gpus_file()["gpus"]:
        for key in [entry["name"], *entry["aliases"]]:
            index[key.lower()] = entry
    return index


@lru_cache(maxsize=None)
def _catalog_gpu(key: str) -> GpuSpec:
    e = _gpu_index()[key]
    return GpuSpec(
        name=e["name"],
        full_name=e["full_name"],
        memory_bytes=e["memory_mib"] * MIB,
        compute_capability=e["compute_capability"],
        bf16=e["bf16"],
        bandwidth_gbs=e["bandwidth_gbs"],
        tflops_dense_16bit=e["tflops_dense_16bit"],
        family=e["family"],
        cuda_context_bytes=e["cuda_context_mib"] * MIB,
        sm_count=e.get("sm_count", 0),
        sustained_fraction=e.get("sustained_fraction", 1.0),
    )


def get_gpu(name: str) -> GpuSpec:
    """A catalog GPU by name or alias ("t4", "a100-80gb", "h100")."""
    key = name.strip().lower()
    if key not in _gpu_index():
        raise CatalogError(f"unknown GPU {name!r}{_suggest(key, list(_gpu_index()))}; see `plan --list-gpus`")
    return _catalog_gpu(key)


def get_gpus(names: list[str] | tuple[str, ...]) -> list[GpuSpec]:
    """Resolve GPU names; ``all`` expands to the whole catalog."""
    out: list[GpuSpec] = []
    for n in names:
        if n.strip().lower() == "all":
            out.extend(get_gpu(g) for g in gpu_names())
        else:
            out.append(get_gpu(n))
    return out
