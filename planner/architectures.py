"""The architecture table: from an HF config.json to what one decoder layer is made of.

One :class:`Architecture` entry per HF ``model_type`` says how that family lays out a decoder
layer; :func:`describe` applies it to a config's fields and returns a :class:`Layer`: the
weight-bearing modules, each with its *role*; the norms, each with its *site*; the mixture of
experts, if any; and the layer's :class:`Traits`. The memory formulas (planner.components,
planner.moments) read roles, sites and traits, never module names, so adding an
architecture is one entry in :data:`TABLE` plus its tests.

Roles of a Linear (module names as in transformers' modeling files):

=========  ===================================================  ==============================
role       what it computes                                     e.g.
=========  ===================================================  ==============================
q, k, v    attention projections from the layer's normed input  q_proj, k_proj, v_proj
qkv        the three fused                                      qkv_proj (Phi-3)
o          attention output projection                          o_proj, dense
gate, up   gated-MLP projections from the normed input          gate_proj, up_proj
gate_up    the two fused                                        gate_up_proj (Phi-3, GLM-4)
fc_in      a plain MLP's first projection                       c_fc (StarCoder2)
down       the MLP's output projection                          down_proj, c_proj
=========  ===================================================  ==============================

Sites of a norm: ``attn_in`` (before attention), ``attn_out`` (on the attention output:
sandwich and post-norm layers), ``mlp_in``, ``mlp_out``, and ``q`` / ``k`` (qk-norm).
"""
from __future__ import annotations

from dataclasses import dataclass, field

ATTENTION_INPUT_ROLES = frozenset({"q", "k", "v", "qkv"})
MLP_INPUT_ROLES = frozenset({"gate", "up", "gate_up", "fc_in"})
# Linears that read the layer's normed input (the attention and MLP inputs).
NORM_READER_ROLES = ATTENTION_INPUT_ROLES | MLP_INPUT_ROLES
ATTENTION_ROLES = ATTENTION_INPUT_ROLES | {"o"}
ROLES = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "fc_in", "down")
NORM_SITES = ("attn_in", "attn_out", "mlp_in", "mlp_out", "q", "k")


@dataclass(frozen=True)
class Linear:
    """One nn.Linear inside a decoder layer, named as in the HF module tree, with its role."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    role: str = ""

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class Norm:
    """One normalization module of a decoder layer: where it runs and its parameters."""

    name: str
    site: str
    size: int  # weight elements (hidden size, or head_dim for a per-head qk-norm)
    bias: bool = False  # LayerNorm with a bias

    @property
    def params(self) -> int:
        return self.size * (2 if self.bias else 1)


@dataclass(frozen=True)
class Traits:
    """How a decoder layer computes, as far as memory is concerned."""

    norm: str = "rms"  # "rms"; "rms_fp32_out": Gemma's RMSNorm, x_norm * (1 + w.float()) in fp32
    placement: str = "pre"  # "pre", "sandwich" (pre and post), "post" (OLMo-2)
    eager_attention: bool = False  # attention logit softcapping (Gemma-2) rules out the SDPA kernels
    logit_softcapping: bool = False  # final logits pass through cap * tanh(logits / cap) (Gemma-2)
    rotary_concat: bool = False  # RoPE joins rotated and pass-through dims with torch.cat (Phi-3)


@dataclass(frozen=True)
class Layer:
    """One decoder layer (every layer alike): its Linears in forward order, norms, traits."""

    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    traits: Traits = field(default_factory=Traits)

    def by_role(self, *roles: str) -> tuple[Linear, ...]:
        return tuple(lin for lin in self.linears if lin.role in roles)

    def norms_at(self, *sites: str) -> tuple[Norm, ...]:
        return tuple(n for n in self.norms if n.site in sites)


@dataclass(frozen=True)
class Architecture:
    """One table entry: how an HF model_type lays out its decoder layer.

    ``attention``: "split" (q_proj, k_proj, v_proj, o_proj) or "fused" (qkv_proj, o_proj).
    ``mlp``: "gated" (gate_proj, up_proj, down_proj) or "fused_gated" (gate_up_proj, down_proj).
    ``qkv_bias``: True where the family always has q/k/v biases (Qwen2), else the config's
    ``attention_bias``. ``norm_sites``: the layer's norms in forward order, with their
    transformers names. ``tie_default``: tie_word_embeddings when the config omits it.
    """

    attention: str = "split"
    mlp: str = "gated"
    qkv_bias: bool = False
    norm_sites: tuple[tuple[str, str], ...] = (("input_layernorm", "attn_in"),
                                               ("post_attention_layernorm", "mlp_in"))
    traits: Traits = field(default_factory=Traits)
    tie_default: bool = False


SANDWICH = (("input_layernorm", "attn_in"), ("post_attention_layernorm", "attn_out"),
            ("pre_feedforward_layernorm", "mlp_in"), ("post_feedforward_layernorm", "mlp_out"))

# model_type -> layout (transformers 5.23 modeling files).
TABLE: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "qwen2": Architecture(qkv_bias=True),
    "qwen3": Architecture(),
    "gemma": Architecture(traits=Traits(norm="rms_fp32_out"), tie_default=True),
    "gemma2": Architecture(norm_sites=SANDWICH, traits=Traits(norm="rms_fp32_out", placement="sandwich"),
                           tie_default=True),
    "phi3": Architecture(attention="fused", mlp="fused_gated", traits=Traits(rotary_concat=True)),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(TABLE))


@dataclass(frozen=True)
class Dims:
    """The config fields every layout reads (validated by the catalog)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def describe(arch: Architecture, config: dict, dims: Dims) -> Layer:
    """The decoder layer of ``arch`` for a config's fields (already validated into ``dims``)."""
    h, inter, q_dim, kv_dim = dims.hidden, dims.intermediate, dims.q_dim, dims.kv_dim
    attn_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    qkv_bias = arch.qkv_bias or attn_bias
    if arch.attention == "fused":
        attention = (Linear("qkv_proj", h, q_dim + 2 * kv_dim, qkv_bias, "qkv"),)
    else:
        attention = (Linear("q_proj", h, q_dim, qkv_bias, "q"), Linear("k_proj", h, kv_dim, qkv_bias, "k"),
                     Linear("v_proj", h, kv_dim, qkv_bias, "v"))
    attention += (Linear("o_proj", q_dim, h, attn_bias, "o"),)
    if arch.mlp == "fused_gated":
        mlp = (Linear("gate_up_proj", h, 2 * inter, mlp_bias, "gate_up"),)
    else:
        mlp = (Linear("gate_proj", h, inter, mlp_bias, "gate"), Linear("up_proj", h, inter, mlp_bias, "up"))
    mlp += (Linear("down_proj", inter, h, mlp_bias, "down"),)
    norms = tuple(Norm(name, site, h) for name, site in arch.norm_sites)
    traits = arch.traits
    if config.get("attn_logit_softcapping"):
        traits = _with(traits, eager_attention=True)
    if config.get("final_logit_softcapping"):
        traits = _with(traits, logit_softcapping=True)
    return Layer(linears=attention + mlp, norms=norms, traits=traits)


def _with(traits: Traits, **changes) -> Traits:
    from dataclasses import replace

    return replace(traits, **changes)
