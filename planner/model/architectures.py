"""The architecture table: from an HF config.json to what one decoder layer is made of.

One :class:`Architecture` entry per HF ``model_type`` says how that family lays out a decoder
layer; :func:`describe` applies it to a config's fields and returns a :class:`Layer`: the
weight-bearing modules, each with its *role*; the norms, each with its *site*; the mixture of
experts, if any; and the layer's :class:`Traits`. The memory formulas (planner.memory.terms,
planner.memory.layer) read roles, sites and traits, never module names, so adding an
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
shared_*   a mixture of experts' shared expert, beside the      mlp.shared_expert.gate_proj,
           routed ones: shared_gate, shared_up, shared_down     up_proj, down_proj (Qwen2-MoE)
shared_    the shared expert's sigmoid gate (h -> 1): its       mlp.shared_expert_gate
scale      output scales the shared expert's (Qwen2-MoE)
delta_qkv  a Gated DeltaNet's q, k, v projection from the       linear_attn.in_proj_qkv
           normed input, into its depthwise causal conv1d       (Qwen3.5)
delta_     the same with the output gate z fused (split after   linear_attn.in_proj_qkvz
qkvz       it; z skips the conv)                                (Qwen3-Next)
delta_z    the gate z of the DeltaNet's gated RMSNorm           linear_attn.in_proj_z
delta_b,   the per-value-head write strength beta (sigmoid)     linear_attn.in_proj_b,
delta_a    and decay input a (h -> value heads each)            in_proj_a (Qwen3.5)
delta_ba   the two fused (split after it)                       linear_attn.in_proj_ba (Qwen3-Next)
delta_out  the DeltaNet's output projection (value dim -> h)    linear_attn.out_proj
=========  ===================================================  ==============================

A Gated DeltaNet layer (Yang et al. 2024, "Gated Delta Networks"; transformers'
modeling_qwen3_5.Qwen3_5GatedDeltaNet) also holds parameters that are not Linears: the
conv1d's depthwise weight (conv_dim, 1, kernel) with conv_dim = 2*key_dim + value_dim, the
per-value-head ``A_log`` and ``dt_bias``, and the gated RMSNorm's weight over one value head
(:class:`DeltaNet`; the inventory lists them). Its full-attention layers (``output_gate``)
double q_proj: half of its output is a per-element gate, ``attn * sigmoid(gate)``, before o_proj.

Sites of a norm: ``attn_in`` (before attention), ``attn_out`` (on the attention output:
sandwich and post-norm layers), ``mlp_in``, ``mlp_out``, and ``q`` / ``k`` (qk-norm).

Norm kinds (the ``norm`` trait): ``rms`` (transformers' RMSNorm: an fp32 upcast of its input,
the product cast back), ``rms_fp32_out`` (the weight multiplies in fp32), ``layer``
(``nn.LayerNorm`` with a bias, StarCoder2: torch's ``native_layer_norm``, which CUDA's
autocast runs in fp32, input and output).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

# a Gated DeltaNet's projections of the layer's normed input, and its output projection
DELTA_INPUT_ROLES = frozenset({"delta_qkv", "delta_qkvz", "delta_z", "delta_b", "delta_a", "delta_ba"})
DELTA_ROLES = DELTA_INPUT_ROLES | {"delta_out"}
# the token mixer's projections of the normed input: attention's, or a Gated DeltaNet's
ATTENTION_INPUT_ROLES = frozenset({"q", "k", "v", "qkv"}) | DELTA_INPUT_ROLES
MLP_INPUT_ROLES = frozenset({"gate", "up", "gate_up", "fc_in"})
# Linears that read the layer's normed input (the attention and MLP inputs).
NORM_READER_ROLES = ATTENTION_INPUT_ROLES | MLP_INPUT_ROLES
ATTENTION_ROLES = ATTENTION_INPUT_ROLES | {"o", "delta_out"}
# a mixture of experts' shared expert (a gated MLP beside the routed experts) and its gate
SHARED_INPUT_ROLES = frozenset({"shared_gate", "shared_up"})
SHARED_ROLES = SHARED_INPUT_ROLES | {"shared_down", "shared_scale"}
ROLES = tuple(sorted(NORM_READER_ROLES | ATTENTION_ROLES | SHARED_ROLES | {"down"}))  # every role the formulas know


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
    """One normalization module of a decoder layer: where it runs and its parameters.

    ``size`` is the width it normalizes over (and its weight's length): the hidden size, the
    whole q or k projection (OLMo-2's qk-norm), or one head (``per_head``: Qwen3, Gemma-3,
    applied to every head of every token).
    """

    name: str
    site: str
    size: int
    bias: bool = False  # LayerNorm with a bias
    per_head: bool = False

    @property
    def params(self) -> int:
        return self.size * (2 if self.bias else 1)


@dataclass(frozen=True)
class Traits:
    """How a decoder layer computes, as far as memory is concerned."""

    # "rms"; "rms_fp32_out": the weight multiplies the fp32 normalized input (Gemma's
    # x_norm * (1 + w.float()), OLMo-2's (w * x_norm).to(dtype)), so that product is fp32;
    # "layer": nn.LayerNorm with a bias (StarCoder2), fp32 in and out under CUDA autocast
    norm: str = "rms"
    placement: str = "pre"  # "pre", "sandwich" (pre and post), "post" (OLMo-2: after each block only)
    qk_norm: str = "none"  # "none", "head" (over head_dim, after the reshape), "full" (over q_dim / kv_dim)
    eager_attention: bool = False  # attention logit softcapping (Gemma-2) rules out the SDPA kernels
    logit_softcapping: bool = False  # final logits pass through cap * tanh(logits / cap) (Gemma-2)
    rotary_concat: bool = False  # RoPE joins rotated and pass-through dims with torch.cat (Phi-3)
    attention_sinks: bool = False  # a learned sink logit per head joins the softmax (gpt-oss)
    embedding_multiplier: bool = False  # the model scales the embedding output itself (Granite)
    residual_multiplier: bool = False  # each block's output is scaled before the residual sum (Granite)
    rotary_fraction: float = 1.0  # partial_rotary_factor: the share of head_dim RoPE rotates
    rope_tables: int = 1  # distinct cos/sin pairs per forward (Gemma-3: one per attention type)
    rope_fp32: bool = False  # the rotary embedding returns fp32 cos / sin (OLMo-2)
    sliding_window: int | None = None  # the window of a sliding-attention layer (its kind's trait)
    output_gate: bool = False  # q_proj also makes a per-element gate: o_proj reads attn * sigmoid(gate) (Qwen3-Next)


@dataclass(frozen=True)
class MoE:
    """A mixture-of-experts MLP (transformers 5.x): a router and fused 3-D expert weights.

    The experts are two parameters, not Linear modules: gate_up (E, 2I, h) and down (E, h, I)
    (gpt-oss: transposed, with biases). Each token goes to its top-k experts; transformers'
    default ``grouped_mm`` path sorts the T*k (token, expert) pairs by expert and runs two
    grouped matmuls, so its tensors do not depend on how balanced the routing is.
    """

    experts: int  # E
    top_k: int  # k
    intermediate: int  # I of one expert
    router: str = "gate"  # the router module's name inside the MLP ("gate", gpt-oss "router")
    router_bias: bool = False
    expert_bias: bool = False  # gpt-oss: gate_up_proj_bias (E, 2I), down_proj_bias (E, h)
    renormalize: bool = False  # the top-k weights are divided by their sum (Mixtral always)
    weights_fp32: bool = False  # the routing weights stay fp32 (Mixtral) instead of the compute dtype
    activation: str = "swiglu"  # "swiglu", "clamped_swiglu" (gpt-oss: clamp, sigmoid, (up + 1))
    peft_converts: bool = False  # peft's all-linear also adapts router and experts (target_parameters)
    # a shared expert every token goes through beside its routed ones: a gated MLP of this
    # width made of Linear modules (roles shared_gate / shared_up / shared_down); 0: none
    shared_intermediate: int = 0
    shared_scale: bool = False  # Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales the shared expert's output


@dataclass(frozen=True)
class DeltaNet:
    """A Gated DeltaNet token mixer (transformers 5.23 modeling_qwen3_5.Qwen3_5GatedDeltaNet,
    modeling_qwen3_next.Qwen3NextGatedDeltaNet): key heads of ``key_dim`` for q and k, value
    heads of ``value_dim`` for v and the gate z, a depthwise causal conv1d of ``conv_kernel``
    taps over q, k and v, the gated delta rule per value head, a gated RMSNorm over each value
    head, out_proj. Its Linears are in :attr:`Layer.linears` with the ``delta_*`` roles."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int

    @property
    def keys(self) -> int:
        """key_heads * key_dim: the width of q and of k."""
        return self.key_heads * self.key_dim

    @property
    def values(self) -> int:
        """value_heads * value_dim: the width of v, z and the output."""
        return self.value_heads * self.value_dim

    @property
    def conv_dim(self) -> int:
        """The conv1d's channels: q, k and v."""
        return 2 * self.keys + self.values


@dataclass(frozen=True)
class Layer:
    """One decoder layer (every layer alike): its Linears in forward order, norms, traits."""

    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    traits: Traits = field(default_factory=Traits)
    moe: MoE | None = None
    deltanet: DeltaNet | None = None  # a Gated DeltaNet in place of attention (its kind "linear_attention")

    def by_role(self, *roles: str) -> tuple[Linear, ...]:
        return tuple(lin for lin in self.linears if lin.role in roles)

    def norms_at(self, *sites: str) -> tuple[Norm, ...]:
        return tuple(n for n in self.norms if n.site in sites)


# The layer kinds the formulas know. A model is a sequence of kinds (planner.model.specs.ModelSpec):
# "decoder" where every layer is alike; "sliding_attention" and "full_attention" where some
# layers attend within a window. A kind the formulas do not know is refused by name.
# "linear_attention": a Gated DeltaNet layer (Qwen3-Next, Qwen3.5), beside their gated "full_attention" ones.
KNOWN_KINDS = ("decoder", "sliding_attention", "full_attention", "linear_attention")


@dataclass(frozen=True)
class LayerKind:
    """One kind of decoder layer and the indices of the layers of that kind."""

    name: str
    layer: Layer
    indices: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.indices)


class UnknownLayerKind(ValueError):
    """A layer kind or role the formulas do not know (the message names it)."""


def check_known(kinds: tuple[LayerKind, ...]) -> None:
    """Refuse, in one line naming it, a layer kind or a Linear role the formulas do not know."""
    for kind in kinds:
        if kind.name not in KNOWN_KINDS:
            raise UnknownLayerKind(f"layer kind {kind.name!r} (layers {_span(kind.indices)}) is not planned yet "
                                   f"(planned kinds: {', '.join(KNOWN_KINDS)}); `probe --device fake` traces it")
        for lin in kind.layer.linears:
            if lin.role not in ROLES:
                raise UnknownLayerKind(f"{lin.name} of the {kind.name} layers has role {lin.role!r}, which the "
                                       f"formulas do not know (known roles: {', '.join(ROLES)})")


def _span(indices: tuple[int, ...]) -> str:
    return ", ".join(map(str, indices[:6])) + (", ..." if len(indices) > 6 else "")


@dataclass(frozen=True)
class Architecture:
    """One table entry: how an HF model_type lays out its decoder layer.

    ``attention``: "split" (q_proj, k_proj, v_proj, o_proj) or "fused" (qkv_proj, o_proj).
    ``mlp``: "gated" (gate_proj, up_proj, down_proj), "fused_gated" (gate_up_proj, down_proj) or
    "plain" (a non-gated MLP: StarCoder2's c_fc, act, c_proj).
    ``bias_field``: the config field that gives every Linear a bias (StarCoder2's ``use_bias``,
    default ``bias_default``), in place of attention_bias / mlp_bias.
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
    # which layers slide when the config has no layer_types: "all" (Mistral), "pattern"
    # (every sliding_window_pattern-th layer is full: Gemma-3), "alternate" (even layers: Gemma-2),
    # "flag" (all, when use_sliding_window is set: Qwen2/3), or "none"
    sliding: str = "none"
    attention_bias_default: bool = False  # attention_bias when the config omits it
    # mixture of experts: "mixtral", "qwen" (Qwen3-MoE), "qwen2" (Qwen2-MoE), "olmoe" or "gpt_oss" (see :func:`_moe`)
    moe: str | None = None
    bias_field: str | None = None
    bias_default: bool = False
    sliding_pattern: int = 6  # "pattern": every n-th layer is full when the config omits sliding_window_pattern
    out_bias_field: str | None = None  # the config field of o_proj's bias where it is not attention_bias's
    out_bias: bool | None = None  # o_proj's bias where the family fixes it (GLM-4: never), else as above
    head_dim_default: int | None = None  # head_dim when the config omits it (else hidden / heads)
    dropout_defaults: tuple[tuple[str, float], ...] = ()  # DROPOUT_FIELDS the family's config defaults above 0
    # a hybrid of Gated DeltaNet ("linear_attention") and gated full-attention layers by the config's
    # layer_types: "split" (Qwen3.5: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) or "fused"
    # (Qwen3-Next: in_proj_qkvz, in_proj_ba); None: attention only
    deltanet: str | None = None
    # the config field of the dense MLP's width (Qwen3.5-MoE has no dense MLP and no intermediate_size)
    intermediate_field: str = "intermediate_size"


SANDWICH = (("input_layernorm", "attn_in"), ("post_attention_layernorm", "attn_out"),
            ("pre_feedforward_layernorm", "mlp_in"), ("post_feedforward_layernorm", "mlp_out"))

# model_type -> layout (transformers 5.23 modeling files).
POST_NORM = (("post_attention_layernorm", "attn_out"), ("post_feedforward_layernorm", "mlp_out"))
# GLM-4's sandwich: its names differ from Gemma's (post_attention_layernorm is the MLP's input norm)
GLM4_SANDWICH = (("input_layernorm", "attn_in"), ("post_self_attn_layernorm", "attn_out"),
                 ("post_attention_layernorm", "mlp_in"), ("post_mlp_layernorm", "mlp_out"))

TABLE: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(sliding="all"),
    "qwen2": Architecture(qkv_bias=True, sliding="flag"),
    "qwen3": Architecture(traits=Traits(qk_norm="head"), sliding="flag"),
    "gemma": Architecture(traits=Traits(norm="rms_fp32_out"), tie_default=True),
    "gemma2": Architecture(norm_sites=SANDWICH, traits=Traits(norm="rms_fp32_out", placement="sandwich"),
                           tie_default=True, sliding="alternate"),
    "gemma3_text": Architecture(norm_sites=SANDWICH, tie_default=True, sliding="pattern",
                                traits=Traits(norm="rms_fp32_out", placement="sandwich", qk_norm="head",
                                              rope_tables=2)),
    "olmo2": Architecture(norm_sites=POST_NORM, traits=Traits(norm="rms_fp32_out", placement="post",
                                                                  qk_norm="full", rope_fp32=True)),
    # OLMo-3 (modeling_olmo3.py): OLMo-2's post-norm layers and whole-projection qk-norm, with
    # sliding-window layers (config layer_types; by default every 4th layer is full) and one
    # fp32 RoPE table per attention type.
    "olmo3": Architecture(norm_sites=POST_NORM, sliding="pattern", sliding_pattern=4,
                          traits=Traits(norm="rms_fp32_out", placement="post", qk_norm="full", rope_fp32=True,
                                        rope_tables=2)),
    # Granite's residual, attention and logits multipliers are scalar products that keep
    # nothing for backward (tracer: the same saved set as Llama); its embedding multiplier
    # makes a second T x h tensor after the embedding module (see components.activations_saved).
    "granite": Architecture(traits=Traits(embedding_multiplier=True, residual_multiplier=True)),
    # SmolLM3's no-RoPE layers keep the q_proj output instead of the rotated q: the same bytes.
    "smollm3": Architecture(tie_default=True),
    "phi3": Architecture(attention="fused", mlp="fused_gated", traits=Traits(rotary_concat=True)),
    # StarCoder2 (modeling_starcoder2.py): nn.LayerNorm with a bias before attention and MLP,
    # a plain MLP c_fc -> gelu(tanh) -> c_proj, a bias on every Linear (config use_bias,
    # default True), tied embeddings by default, every layer in the sliding window when set.
    "starcoder2": Architecture(mlp="plain", traits=Traits(norm="layer"), tie_default=True, sliding="all",
                               bias_field="use_bias", bias_default=True),
    # Ministral-3 (modeling_ministral3.py): Mistral's layer; the rotated q is scaled by a
    # position-dependent factor (llama_4_scaling_beta) before attention, a same-size tensor.
    "ministral3": Architecture(sliding="all", head_dim_default=128),
    # Seed-OSS (modeling_seed_oss.py): Llama's layer with q/k/v biases (attention_bias, default
    # True) and an o_proj bias only with attention_out_bias; its config defaults to attention and
    # residual dropout 0.1 (see :data:`DROPOUT_FIELDS`).
    "seed_oss": Architecture(attention_bias_default=True, out_bias_field="attention_out_bias",
                             dropout_defaults=(("attention_dropout", 0.1), ("residual_dropout", 0.1)),
                             head_dim_default=128),
    # GLM-4 (modeling_glm4.py, configuration_glm4.py): Llama's attention with q/k/v biases
    # (attention_bias, default True) and none on o_proj; a fused gate_up_proj MLP (chunked in
    # two); four RMSNorms a layer (input, post_self_attn, post_attention, post_mlp: a sandwich);
    # RoPE on the first half of each head (partial_rotary_factor defaults to 0.5), interleaved
    # pairs, the pass-through half joined with torch.cat; head_dim defaults to 128.
    "glm4": Architecture(mlp="fused_gated", norm_sites=GLM4_SANDWICH, attention_bias_default=True, out_bias=False,
                         head_dim_default=128,
                         traits=Traits(placement="sandwich", rotary_concat=True, rotary_fraction=0.5)),
    # EXAONE-4 (modeling_exaone4.py, configuration_exaone4.py): OLMo-2's post-norm layer (a norm
    # after attention and after the MLP, none before) with the plain RMSNorm (the product in the
    # input dtype) and Qwen3's per-head q/k norms; with a sliding window, every 4th layer is full
    # (sliding_window_pattern, or layer_types) and the full layers skip RoPE (the normed q/k go to
    # attention: the same bytes as the rotated ones). A one-letter pattern string ("LLLG") is read
    # as transformers' docstring describes it only through layer_types (see _sliding_indices).
    "exaone4": Architecture(norm_sites=POST_NORM, sliding="pattern", sliding_pattern=4,
                            traits=Traits(placement="post", qk_norm="head")),
    # Qwen3.5 / Qwen3-Next (modeling_qwen3_5.py, modeling_qwen3_5_moe.py, modeling_qwen3_next.py):
    # layer_types mix Gated DeltaNet layers ("linear_attention") with full-attention ones (every
    # full_attention_interval-th, 4 by default) whose q_proj also makes an output gate; per-head
    # q/k norms; RoPE on partial_rotary_factor (0.25 by default) of each head, joined with
    # torch.cat; every RMSNorm zero-centred, (1 + w) multiplied in fp32 (Gemma's); head_dim 256
    # by default. Qwen3.5-MoE and Qwen3-Next: routed experts and a gated shared expert (Qwen2-MoE's).
    "qwen3_5_text": Architecture(norm_sites=(("input_layernorm", "attn_in"), ("post_attention_layernorm", "mlp_in")),
                                 deltanet="split", head_dim_default=256,
                                 traits=Traits(norm="rms_fp32_out", qk_norm="head", rotary_concat=True,
                                               rotary_fraction=0.25)),
    "qwen3_5_moe_text": Architecture(deltanet="split", head_dim_default=256, moe="qwen3_5_moe",
                                     intermediate_field="moe_intermediate_size",
                                     traits=Traits(norm="rms_fp32_out", qk_norm="head", rotary_concat=True,
                                                   rotary_fraction=0.25)),
    "qwen3_next": Architecture(deltanet="fused", head_dim_default=256, moe="qwen_next",
                               traits=Traits(norm="rms_fp32_out", qk_norm="head", rotary_concat=True,
                                             rotary_fraction=0.25)),
    "mixtral": Architecture(sliding="all", moe="mixtral"),
    # Qwen2-MoE (Qwen1.5-MoE): Qwen2's attention (q/k/v biases, the config's qkv_bias), routed
    # fused experts and a shared expert of Linear modules with its own sigmoid gate
    # (transformers 5.23 modeling_qwen2_moe.Qwen2MoeSparseMoeBlock)
    "qwen2_moe": Architecture(qkv_bias=True, sliding="flag", moe="qwen2"),
    # OLMoE: Llama's pre-norm layer with OLMo's qk-norm over the whole q / k projection (its
    # RMSNorm multiplies the weight in the input dtype) and Qwen3-MoE's router and fused experts,
    # each intermediate_size wide (transformers 5.23 modeling_olmoe; clip_qkv unset in OLMoE-1B-7B)
    "olmoe": Architecture(traits=Traits(qk_norm="full"), moe="olmoe"),
    "qwen3_moe": Architecture(traits=Traits(qk_norm="head"), sliding="flag", moe="qwen"),
    # gpt-oss has no SDPA path in transformers (its sinks need the eager softmax), and its
    # norms multiply the weight in fp32 ((w * x_fp32).to(dtype)).
    "gpt_oss": Architecture(traits=Traits(norm="rms_fp32_out", eager_attention=True, attention_sinks=True),
                            sliding="alternate", attention_bias_default=True, moe="gpt_oss"),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(TABLE))

# Dropout inside the model (StarCoder2's, Seed-OSS's configs): masks the plan does not model.
DROPOUT_FIELDS = ("attention_dropout", "residual_dropout", "embedding_dropout")


def dropout_note(arch: Architecture, config: dict) -> str:
    """A plan's note where the config trains with dropout inside the model, which the formulas do
    not model (its masks and, for attention dropout, the kernel SDPA picks); "" otherwise."""
    on = {f: config.get(f, dict(arch.dropout_defaults).get(f, 0.0)) for f in DROPOUT_FIELDS}
    on = {f: v for f, v in on.items() if isinstance(v, (int, float)) and v > 0}
    if not on:
        return ""
    return ("the config trains with " + ", ".join(f"{f} {v}" for f, v in on.items()) + ": planned without "
            "dropout inside the model (its masks are not modelled); set them to 0 to fine-tune as planned, or "
            "trace the config with `probe --device fake`")


@dataclass(frozen=True)
class Dims:
    """The config fields every layout reads (validated by the catalog)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def describe(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    """The decoder layers of ``arch`` for a config's fields (already validated into ``dims``),
    as kinds: one "decoder" kind where every layer is alike, or "sliding_attention" and
    "full_attention" where some layers attend within a window (the config's layer_types, or
    the family's rule)."""
    if arch.deltanet:
        return _hybrid(arch, config, dims)
    layer = _layer(arch, config, dims)
    window = config.get("sliding_window")
    sliding = _sliding_indices(arch, config, dims.layers) if isinstance(window, int) and window > 0 else ()
    everything = tuple(range(dims.layers))
    if not sliding:
        return (LayerKind("decoder", layer, everything),)
    windowed = LayerKind("sliding_attention", replace(layer, traits=replace(layer.traits, sliding_window=window)),
                         sliding)
    full = tuple(i for i in everything if i not in set(sliding))
    return (windowed,) + ((LayerKind("full_attention", layer, full),) if full else ())


def _layer(arch: Architecture, config: dict, dims: Dims) -> Layer:
    """The module layout and traits of one decoder layer of ``arch``."""
    h, inter, q_dim, kv_dim = dims.hidden, dims.intermediate, dims.q_dim, dims.kv_dim
    attn_bias = bool(config.get("attention_bias", arch.attention_bias_default))
    mlp_bias = bool(config.get("mlp_bias", False))
    if arch.bias_field:
        attn_bias = mlp_bias = bool(config.get(arch.bias_field, arch.bias_default))
    qkv_bias = bool(config.get("qkv_bias", arch.qkv_bias)) or attn_bias
    if arch.attention == "fused":
        attention = (Linear("qkv_proj", h, q_dim + 2 * kv_dim, qkv_bias, "qkv"),)
    else:
        attention = (Linear("q_proj", h, q_dim, qkv_bias, "q"), Linear("k_proj", h, kv_dim, qkv_bias, "k"),
                     Linear("v_proj", h, kv_dim, qkv_bias, "v"))
    out_bias = bool(config.get(arch.out_bias_field, False)) if arch.out_bias_field else attn_bias
    if arch.out_bias is not None:
        out_bias = arch.out_bias
    attention += (Linear("o_proj", q_dim, h, out_bias, "o"),)
    moe = _moe(arch.moe, config, dims) if arch.moe else None
    if moe is not None:
        mlp = _shared_expert(moe, h)
    elif arch.mlp == "fused_gated":
        mlp = (Linear("gate_up_proj", h, 2 * inter, mlp_bias, "gate_up"),)
    elif arch.mlp == "plain":
        mlp = (Linear("c_fc", h, inter, mlp_bias, "fc_in"),)
    else:
        mlp = (Linear("gate_proj", h, inter, mlp_bias, "gate"), Linear("up_proj", h, inter, mlp_bias, "up"))
    if moe is None:
        mlp += (Linear("c_proj" if arch.mlp == "plain" else "down_proj", inter, h, mlp_bias, "down"),)
    layer_norm = arch.traits.norm == "layer"
    norms = tuple(Norm(name, site, h, bias=layer_norm) for name, site in arch.norm_sites)
    if arch.traits.qk_norm == "head":
        norms += (Norm("q_norm", "q", dims.head_dim, per_head=True), Norm("k_norm", "k", dims.head_dim, per_head=True))
    elif arch.traits.qk_norm == "full":
        norms += (Norm("q_norm", "q", q_dim), Norm("k_norm", "k", kv_dim))
    # the traits a config sets on top of its family's
    changes: dict = {}
    rotary = config.get("partial_rotary_factor") or (config.get("rope_parameters") or {}).get("partial_rotary_factor")
    if rotary:
        changes["rotary_fraction"] = float(rotary)
    if config.get("attn_logit_softcapping"):
        changes["eager_attention"] = True
    if config.get("final_logit_softcapping"):
        changes["logit_softcapping"] = True
    return Layer(linears=attention + mlp, norms=norms, traits=replace(arch.traits, **changes), moe=moe)


class LayoutError(ValueError):
    """A config the architecture table cannot describe (the message names the field)."""


HYBRID_TYPES = ("linear_attention", "full_attention")


def _hybrid(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    """A Gated DeltaNet hybrid's kinds: "linear_attention" layers (the DeltaNet, then the MLP)
    and gated "full_attention" ones, by the config's layer_types, else every
    full_attention_interval-th layer full (transformers' Qwen3_5TextConfig / Qwen3NextConfig
    default, 4). A layer type the table does not know is refused, naming it."""
    types = config.get("layer_types")
    if not isinstance(types, list) or not types:
        interval = config.get("full_attention_interval", 4)
        if not isinstance(interval, int) or interval < 1:
            raise LayoutError(f"config field 'full_attention_interval' must be a positive integer, got {interval!r}")
        types = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(dims.layers)]
    if len(types) < dims.layers:
        raise LayoutError(f"config field 'layer_types' lists {len(types)} layers, num_hidden_layers is {dims.layers}")
    for i, t in enumerate(types[:dims.layers]):
        if t not in HYBRID_TYPES:
            raise LayoutError(f"layer_types[{i}] is {t!r}, a layer type the architecture table does not know for "
                              f"this family (known: {', '.join(HYBRID_TYPES)})")
    full = _layer(arch, config, dims)
    q = full.by_role("q")[0]
    gated = replace(full, linears=tuple(replace(lin, out_features=2 * q.out_features) if lin is q else lin
                                        for lin in full.linears),
                    traits=replace(full.traits, output_gate=True))
    linear = _deltanet_layer(arch, config, dims, full)
    out = []
    for name, layer in (("linear_attention", linear), ("full_attention", gated)):
        indices = tuple(i for i, t in enumerate(types[:dims.layers]) if t == name)
        if indices:
            out.append(LayerKind(name, layer, indices))
    return tuple(out)


DELTANET_FIELDS = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
                   "linear_conv_kernel_dim")
DELTANET_DEFAULTS = {"linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
                     "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4}  # the configs' class defaults


def _deltanet_layer(arch: Architecture, config: dict, dims: Dims, full: Layer) -> Layer:
    """A Gated DeltaNet layer: the full layer's norms (without the q/k norms) and MLP, its
    attention replaced by the DeltaNet's Linears (no biases)."""
    values = {}
    for name in DELTANET_FIELDS:
        value = config.get(name, DELTANET_DEFAULTS[name])
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LayoutError(f"config field {name!r} must be a positive integer, got {value!r}")
        values[name] = value
    net = DeltaNet(values["linear_num_key_heads"], values["linear_num_value_heads"], values["linear_key_head_dim"],
                   values["linear_value_head_dim"], values["linear_conv_kernel_dim"])
    if net.value_heads % net.key_heads:
        raise LayoutError(f"config field 'linear_num_value_heads' ({net.value_heads}) must be a multiple of "
                          f"'linear_num_key_heads' ({net.key_heads})")
    h, vh = dims.hidden, net.value_heads
    if arch.deltanet == "fused":
        mixer = (Linear("linear_attn.in_proj_qkvz", h, net.conv_dim + net.values, False, "delta_qkvz"),
                 Linear("linear_attn.in_proj_ba", h, 2 * vh, False, "delta_ba"))
    else:
        mixer = (Linear("linear_attn.in_proj_qkv", h, net.conv_dim, False, "delta_qkv"),
                 Linear("linear_attn.in_proj_z", h, net.values, False, "delta_z"),
                 Linear("linear_attn.in_proj_b", h, vh, False, "delta_b"),
                 Linear("linear_attn.in_proj_a", h, vh, False, "delta_a"))
    mixer += (Linear("linear_attn.out_proj", net.values, h, False, "delta_out"),)
    mlp = tuple(lin for lin in full.linears if lin.role not in ATTENTION_ROLES)
    norms = tuple(n for n in full.norms if n.site not in ("q", "k"))
    return replace(full, linears=mixer + mlp, norms=norms, deltanet=net)


def _shared_expert(moe: MoE, h: int) -> tuple[Linear, ...]:
    """A mixture of experts' shared expert as Linear modules, in forward order (Qwen2-MoE runs
    it before the router, and its sigmoid gate after the routed experts)."""
    if not moe.shared_intermediate:
        return ()
    i = moe.shared_intermediate
    out = (Linear("shared_expert.gate_proj", h, i, False, "shared_gate"),
           Linear("shared_expert.up_proj", h, i, False, "shared_up"),
           Linear("shared_expert.down_proj", i, h, False, "shared_down"))
    if moe.shared_scale:
        out += (Linear("shared_expert_gate", h, 1, False, "shared_scale"),)
    return out


def _moe(kind: str, config: dict, dims: Dims) -> MoE:
    """The mixture of experts of a Mixtral, Qwen3-MoE or gpt-oss config (transformers 5.23 defaults).

    peft's all-linear reaches the router and the experts only for the families whose
    checkpoint-conversion pattern it knows (Mixtral, Qwen3-MoE: it rewrites the targets to
    ``target_parameters``); for gpt-oss it adapts the attention Linears only."""
    experts = config.get("num_local_experts") or config.get("num_experts")
    top_k = config.get("num_experts_per_tok") or config.get("experts_per_token")
    inter = config.get("moe_intermediate_size") if kind in ("qwen", "qwen2", "qwen_next", "qwen3_5_moe") else dims.intermediate
    for field_name, value in (("num_local_experts", experts), ("num_experts_per_tok", top_k),
                              ("moe_intermediate_size", inter)):
        if value is None:
            raise LayoutError(f"config.json lacks the field {field_name!r}, which the architecture table needs")
        if not isinstance(value, int) or value < 1:
            raise LayoutError(f"config field {field_name!r} must be a positive integer, got {value!r}")
    if kind in ("qwen", "qwen2", "qwen_next", "qwen3_5_moe") and (config.get("mlp_only_layers") or (config.get("decoder_sparse_step") or 1) != 1):
        raise LayoutError("dense layers between the MoE layers (mlp_only_layers, decoder_sparse_step) are not "
                          "planned yet: use probe --device fake")
    if kind == "mixtral":
        return MoE(experts, top_k, inter, renormalize=True, weights_fp32=True, peft_converts=True)
    if kind == "qwen":
        return MoE(experts, top_k, inter, renormalize=bool(config.get("norm_topk_prob", False)), peft_converts=True)
    if kind == "olmoe":
        # transformers maps olmoe to the "qwen2_moe" conversion pattern: peft's all-linear adapts
        # the router and the fused experts (gate_up at 2r) as for Qwen3-MoE (tracer)
        return MoE(experts, top_k, inter, renormalize=bool(config.get("norm_topk_prob", False)), peft_converts=True)
    if kind in ("qwen2", "qwen_next", "qwen3_5_moe"):
        # peft 0.21 rewrites all-linear to the fused experts only for the model types transformers'
        # conversion_mapping sends to the "qwen2_moe" pattern; qwen2_moe itself is not one of them,
        # so all-linear adapts the attention and the shared expert's Linears (tracer)
        shared = config.get("shared_expert_intermediate_size")
        if not isinstance(shared, int) or shared < 1:
            raise LayoutError("config.json lacks the field 'shared_expert_intermediate_size', which the "
                              "architecture table needs")
        # (transformers maps qwen3_next to that pattern: all-linear adapts its fused experts too;
        # qwen3_5_moe is not mapped)
        # Qwen3-Next's norm_topk_prob defaults to True; Qwen3.5-MoE's router always renormalizes
        renormalize = kind == "qwen3_5_moe" or bool(config.get("norm_topk_prob", kind == "qwen_next"))
        return MoE(experts, top_k, inter, renormalize=renormalize, shared_intermediate=shared, shared_scale=True,
                   peft_converts=kind == "qwen_next")
    return MoE(experts, top_k, inter, router="router", router_bias=True, expert_bias=True,
               activation="clamped_swiglu")


def _sliding_indices(arch: Architecture, config: dict, layers: int) -> tuple[int, ...]:
    """The indices of the layers that attend within the sliding window: the config's
    layer_types where given, else the family's rule (transformers' config defaults)."""
    types = config.get("layer_types")
    if isinstance(types, list) and types:
        return tuple(i for i, t in enumerate(types[:layers]) if t == "sliding_attention")
    if arch.sliding == "all" or (arch.sliding == "flag" and config.get("use_sliding_window")):
        return tuple(range(layers))
    if arch.sliding == "alternate":  # Gemma-2, gpt-oss: the even layers
        return tuple(range(0, layers, 2))
    if arch.sliding == "pattern":  # Gemma-3: every sliding_window_pattern-th layer is full
        pattern = config.get("sliding_window_pattern") or arch.sliding_pattern
        if not isinstance(pattern, int):  # EXAONE-4's "LLLG": its config needs layer_types with it
            raise LayoutError(f"config field 'sliding_window_pattern' is {pattern!r}: a pattern that is not a "
                              "layer count needs the config's layer_types")
        return tuple(i for i in range(layers) if (i + 1) % pattern)
    return ()
