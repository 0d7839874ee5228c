"""The hybrid families' layer kinds: Mamba-2 or short-convolution layers between attention ones.

One function per family turns a config into :class:`~planner.model.architectures.LayerKind` s,
each a layout (Linears with roles, norms, mixture of experts, the non-attention mixer) and its
layer indices, read off transformers 5.23's modeling files:

- ``granitemoehybrid`` (Granite-4.0-H): ``layer_types`` names each layer's mixer, "mamba" or
  "attention" (transformers' remap_legacy_layer_types also reads "linear_attention" /
  "full_attention"); every layer then runs its MLP: ``shared_mlp`` (input_linear h -> 2*I_s, a
  fused gate and up, and output_linear), with ``num_local_experts`` routed experts beside it
  (GraniteMoeHybridDecoderLayer.forward).
- ``nemotron_h`` (Nemotron-H, Nemotron Nano 2): one block per layer, a norm then one mixer,
  named by ``layers_block_type`` (alias ``layer_types``) or the legacy ``hybrid_override_pattern``
  (M Mamba-2, * attention, - MLP, E experts; configuration_nemotron_h._pattern_to_list).
- ``lfm2``: ``layer_types`` ("conv" or "full_attention"), else ``full_attn_idxs`` (default:
  every layer attends); each layer a mixer then the SwiGLU MLP w1 / w3 / w2, whose width
  transformers adjusts from ``intermediate_size`` (Lfm2MLP.__init__, :func:`intermediate`).

A layer type the family does not know, or one the formulas do not plan (Nemotron-H's "moe"
layers), is refused in one line naming it (:class:`~planner.model.architectures.LayoutError`).
"""
from __future__ import annotations

from dataclasses import replace

from planner.model.architectures import (Architecture, Dims, Layer, LayerKind, LayoutError, Linear, Mamba2, MoE,
                                        Norm, ShortConv)

# every spelling of a layer type a family's config may use -> the planner's kind
GRANITE_TYPES = {"mamba": "mamba2", "linear_attention": "mamba2", "attention": "attention",
                 "full_attention": "attention"}
NEMOTRON_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
NEMOTRON_TYPES = {"linear_attention": "mamba2", "mamba": "mamba2", "full_attention": "attention",
                  "attention": "attention", "mlp": "mlp"}
LFM2_TYPES = {"conv": "short_conv", "full_attention": "attention"}


def describe(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    """The layer kinds of a hybrid config, in the order of their first layer."""
    rule = {"granitemoehybrid": _granite, "nemotron_h": _nemotron_h, "lfm2": _lfm2}[arch.hybrid]
    return rule(arch, config, dims)


def intermediate(arch: Architecture, config: dict, inter: int) -> int:
    """The dense MLP width the model builds from its config's ``intermediate_size``: LFM2's
    Lfm2MLP takes 2/3 of it, times block_ffn_dim_multiplier, rounded up to block_multiple_of
    (when block_auto_adjust_ff_dim, its default); a Granite-4.0-H without experts runs only its
    shared_mlp, shared_intermediate_size wide (its intermediate_size then unused)."""
    if arch.hybrid == "lfm2" and config.get("block_auto_adjust_ff_dim", True):
        inter = int(2 * inter / 3)
        multiplier = config.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            step = config.get("block_multiple_of", 256)
            inter = step * ((int(multiplier * inter) + step - 1) // step)
        return inter
    if arch.hybrid == "granitemoehybrid" and not config.get("num_local_experts", 8):
        return _positive(config, "shared_intermediate_size", 1024)
    return inter


def _positive(config: dict, name: str, default=None) -> int:
    value = config.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        if name not in config and default is None:
            raise LayoutError(f"config.json lacks the field {name!r}, which the architecture table needs")
        raise LayoutError(f"config field {name!r} must be a positive integer, got {value!r}")
    return value


def _kinds(types: list[str], layers: dict[str, Layer]) -> tuple[LayerKind, ...]:
    """One kind per distinct type, in the order of their first layer."""
    order = list(dict.fromkeys(types))
    return tuple(LayerKind(k, layers[k], tuple(i for i, t in enumerate(types) if t == k)) for k in order)


def _types(raw, names: dict[str, str], field_name: str, layers: int, family: str) -> list[str]:
    """A config's per-layer type list as kinds, refusing a type the family does not plan."""
    if not isinstance(raw, list) or not raw:
        raise LayoutError(f"config field {field_name!r} must be a non-empty list of layer types, got {raw!r}")
    if len(raw) < layers:
        raise LayoutError(f"config field {field_name!r} names {len(raw)} layer types for {layers} layers")
    unknown = sorted({str(t) for t in raw[:layers] if t not in names})
    if unknown:
        raise LayoutError(f"config field {field_name!r} names layer type {', '.join(map(repr, unknown))}, which the "
                          f"planner does not plan for {family} (planned: {', '.join(sorted(names))}); "
                          "`probe --device fake` traces it")
    return [names[t] for t in raw[:layers]]


def _attention(prefix: str, dims: Dims, bias: bool, out: str = "o_proj") -> tuple[Linear, ...]:
    h, q, kv = dims.hidden, dims.q_dim, dims.kv_dim
    return (Linear(f"{prefix}.q_proj", h, q, bias, "q"), Linear(f"{prefix}.k_proj", h, kv, bias, "k"),
            Linear(f"{prefix}.v_proj", h, kv, bias, "v"), Linear(f"{prefix}.{out}", q, h, bias, "o"))


def _mamba(prefix: str, h: int, mixer: Mamba2, bias: bool) -> tuple[Linear, ...]:
    return (Linear(f"{prefix}.in_proj", h, mixer.projection, bias, "ssm_in"),
            Linear(f"{prefix}.out_proj", mixer.inner, h, bias, "ssm_out"))


# ---------------------------------------------------------------- Granite-4.0-H

def _granite(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    h = dims.hidden
    types = _types(config.get("layer_types") or config.get("layers_block_type") or ["mamba"] * dims.layers,
                   GRANITE_TYPES, "layer_types", dims.layers, "granitemoehybrid")
    heads = _positive(config, "mamba_n_heads", 128)
    inner = (config.get("mamba_expand") or 2) * h
    head_dim = config.get("mamba_d_head", "auto")
    head_dim = inner // heads if head_dim == "auto" else head_dim
    if not isinstance(head_dim, int) or head_dim * heads != inner:
        raise LayoutError(f"config field 'mamba_d_head' ({head_dim!r}) times mamba_n_heads ({heads}) must equal "
                          f"mamba_expand * hidden_size ({inner})")
    mixer = Mamba2(heads=heads, head_dim=head_dim, state=_positive(config, "mamba_d_state", 256),
                   groups=_positive(config, "mamba_n_groups", 1), conv_kernel=_positive(config, "mamba_d_conv", 4),
                   conv_bias=bool(config.get("mamba_conv_bias", True)),
                   chunk=_positive(config, "mamba_chunk_size", 256))
    experts = config.get("num_local_experts", 8) or 0
    shared = _positive(config, "shared_intermediate_size", 1024)
    if experts:
        moe = MoE(experts, _positive(config, "num_experts_per_tok", 2), dims.intermediate, router="router",
                  activation="swiglu", shared_intermediate=shared, router_topk_softmax=True, shared_fused=True)
        mlp = (Linear("shared_mlp.input_linear", h, 2 * shared, False, "shared_gate_up"),
               Linear("shared_mlp.output_linear", shared, h, False, "shared_down"))
    else:
        moe = None
        mlp = (Linear("shared_mlp.input_linear", h, 2 * shared, False, "gate_up"),
               Linear("shared_mlp.output_linear", shared, h, False, "down"))
    norms = (Norm("input_layernorm", "attn_in", h), Norm("post_attention_layernorm", "mlp_in", h))
    rope = config.get("position_embedding_type") == "rope"
    traits = replace(arch.traits, rope_tables=1 if rope else 0)
    attn_bias = bool(config.get("attention_bias", False))
    layers = {
        "mamba2": Layer(_mamba("mamba", h, mixer, bool(config.get("mamba_proj_bias", False))) + mlp, norms, traits,
                        moe, mixer),
        "attention": Layer(_attention("self_attn", dims, attn_bias) + mlp, norms, traits, moe),
    }
    return _kinds(types, layers)


# ---------------------------------------------------------------- Nemotron-H

def _nemotron_h(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    h = dims.hidden
    raw = config.get("layers_block_type") or config.get("layer_types")
    field_name = "layers_block_type"
    if raw is None and isinstance(config.get("hybrid_override_pattern"), str):
        pattern, field_name = config["hybrid_override_pattern"], "hybrid_override_pattern"
        unknown = sorted(set(pattern) - set(NEMOTRON_PATTERN))
        if unknown:
            raise LayoutError(f"config field 'hybrid_override_pattern' names layer type "
                              f"{', '.join(map(repr, unknown))}, which Nemotron-H does not know "
                              f"(M Mamba-2, * attention, - MLP, E experts)")
        raw = [NEMOTRON_PATTERN[c] for c in pattern]
    if raw is None:
        raise LayoutError("config.json lacks the field 'layers_block_type' (or 'hybrid_override_pattern'), which "
                          "the architecture table needs")
    types = _types(raw, NEMOTRON_TYPES, field_name, dims.layers, "nemotron_h")
    mixer = Mamba2(heads=_positive(config, "mamba_num_heads", 128), head_dim=_positive(config, "mamba_head_dim", 64),
                   state=_positive(config, "ssm_state_size", 128), groups=_positive(config, "n_groups", 8),
                   conv_kernel=_positive(config, "conv_kernel", 4), conv_bias=bool(config.get("use_conv_bias", True)),
                   chunk=_positive(config, "chunk_size", 128))
    traits = arch.traits
    mlp_bias = bool(config.get("mlp_bias", False))
    layers = {
        "mamba2": Layer(_mamba("mixer", h, mixer, bool(config.get("use_bias", False))),
                        (Norm("norm", "attn_in", h),), traits, mixer=mixer),
        "attention": Layer(_attention("mixer", dims, bool(config.get("attention_bias", False))),
                           (Norm("norm", "attn_in", h),), traits),
        "mlp": Layer((Linear("mixer.up_proj", h, dims.intermediate, mlp_bias, "fc_in"),
                      Linear("mixer.down_proj", dims.intermediate, h, mlp_bias, "down")),
                     (Norm("norm", "mlp_in", h),), traits),
    }
    return _kinds(types, layers)


# ---------------------------------------------------------------- LFM2

def _lfm2(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    h = dims.hidden
    raw = config.get("layer_types")
    if raw is None:
        attn = config.get("full_attn_idxs")
        attn = set(range(dims.layers) if attn is None else attn)
        raw = ["full_attention" if i in attn else "conv" for i in range(dims.layers)]
    types = _types(raw, LFM2_TYPES, "layer_types", dims.layers, "lfm2")
    bias = bool(config.get("conv_bias", False))
    conv = ShortConv(width=h, kernel=_positive(config, "conv_L_cache", 3), bias=bias)
    inter = dims.intermediate  # already Lfm2MLP's width (:func:`intermediate`, applied by the catalog)
    mlp = (Linear("feed_forward.w1", h, inter, False, "gate"), Linear("feed_forward.w3", h, inter, False, "up"),
           Linear("feed_forward.w2", inter, h, False, "down"))
    norms = (Norm("operator_norm", "attn_in", h), Norm("ffn_norm", "mlp_in", h))
    qk = (Norm("self_attn.q_layernorm", "q", dims.head_dim, per_head=True),
          Norm("self_attn.k_layernorm", "k", dims.head_dim, per_head=True))
    layers = {
        "short_conv": Layer((Linear("conv.in_proj", h, 3 * h, bias, "conv_in"),
                             Linear("conv.out_proj", h, h, bias, "conv_out")) + mlp, norms,
                            replace(arch.traits, qk_norm="none"), mixer=conv),
        "attention": Layer(_attention("self_attn", dims, False, out="out_proj") + mlp, norms + qk, arch.traits),
    }
    return _kinds(types, layers)
