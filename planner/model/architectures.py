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
ple_gate   a per-layer input's gate: the layer's output (after  per_layer_input_gate (Gemma 4)
           the MLP's residual sum) -> the per-layer width p
ple_proj   the gated per-layer input back to h (p -> h)         per_layer_projection (Gemma 4)
shared_    the shared expert's gate and up fused (h -> 2*I_s)   shared_mlp.input_linear
gate_up    (Granite-4.0 hybrids with experts)                   (Granite-4.0-H-Tiny)
ssm_in     a Mamba-2 mixer's input projection: h -> z (gate,    mamba.in_proj, mixer.in_proj
           d_inner), x B C (the conv input, d_inner + 2GN),
           dt (one per head)
ssm_out    a Mamba-2 mixer's output projection, d_inner -> h    mamba.out_proj
conv_in    a short gated convolution's input projection,        conv.in_proj (LFM2)
           h -> B, C, x (3h)
conv_out   a short gated convolution's output projection        conv.out_proj (LFM2)
q_a        multi-head latent attention: q's down-projection     q_a_proj (DeepSeek-V3)
           from the normed input to q_lora_rank
q_b        q's up-projection from the normed q latent to every  q_b_proj
           head's nope + rope dims
kv_a       the joint k / v down-projection to kv_lora_rank,     kv_a_proj_with_mqa
           plus the one rope key every head shares
kv_b       every head's k nope dims and v dims, from the        kv_b_proj
           normed kv latent
delta_qkv  a Gated DeltaNet's q, k, v projection from the       linear_attn.in_proj_qkv
           normed input, into its depthwise causal conv1d       (Qwen3.5)
delta_     the same with the output gate z fused (split after   linear_attn.in_proj_qkvz
qkvz       it; z skips the conv)                                (Qwen3-Next)
delta_z    the gate z of the DeltaNet's gated RMSNorm           linear_attn.in_proj_z
delta_b,   the per-value-head write strength beta (sigmoid)     linear_attn.in_proj_b,
delta_a    and decay input a (h -> value heads each)            in_proj_a (Qwen3.5)
delta_ba   the two fused (split after it)                       linear_attn.in_proj_ba (Qwen3-Next)
delta_out  the DeltaNet's output projection (value dim -> h)    linear_attn.out_proj
router     a mixture of experts' router where it is a plain     router.proj (Gemma 4)
           nn.Linear (h -> E) inside a router module
index_q    DeepSeek-V3.2's sparse-attention indexer: its        indexer.wq_b
           queries, every index head, from the normed q latent
index_k    its one key per token, from the normed input         indexer.wk
index_w    its per-head weights, from the normed input          indexer.weights_proj
=========  ===================================================  ==============================

Mixers that are not attention (a layer's ``mixer``, planner.model.architectures.Mamba2 and
ShortConv) also hold parameters that are not Linear weights: Mamba-2's depthwise conv1d weight
(conv_dim, 1, K) and bias, A_log, D and dt_bias (one per head) and its gated RMSNorm's weight
(d_inner); a short convolution's depthwise conv weight (h, 1, K) and optional bias. The
inventory (planner.model.inventory) lists them; peft's all-linear adapts none of them (Conv1d
is not a Linear) and bitsandbytes quantizes none (it swaps nn.Linear modules only).

A Gated DeltaNet layer (Yang et al. 2024, "Gated Delta Networks"; transformers'
modeling_qwen3_5.Qwen3_5GatedDeltaNet) also holds parameters that are not Linears: the
conv1d's depthwise weight (conv_dim, 1, kernel) with conv_dim = 2*key_dim + value_dim, the
per-value-head ``A_log`` and ``dt_bias``, and the gated RMSNorm's weight over one value head
(:class:`DeltaNet`; the inventory lists them). Its full-attention layers (``output_gate``)
double q_proj: half of its output is a per-element gate, ``attn * sigmoid(gate)``, before o_proj.

Sites of a norm: ``attn_in`` (before attention), ``attn_out`` (on the attention output:
sandwich and post-norm layers), ``mlp_in``, ``mlp_out``, ``q`` / ``k`` (qk-norm), ``v`` (a
per-head norm of the values without a weight: Gemma 4's v_norm), ``ple_out`` (on the
per-layer input's projection: Gemma 4's post_per_layer_input_norm), ``moe_in`` (a second
norm of the MLP's input, read by the experts beside a dense MLP: Gemma 4's router.norm and
pre_feedforward_layernorm_2), ``q_a`` / ``kv_a`` (multi-head latent attention's norms over its q
and kv latents) and ``index_k`` (DeepSeek-V3.2's indexer: an nn.LayerNorm with a bias over its keys).

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
# the token mixer's projections of the normed input: attention's (multi-head latent attention's
# q_a / kv_a read the normed input; q_b / kv_b their latent norms' outputs), or a Gated DeltaNet's
ATTENTION_INPUT_ROLES = frozenset({"q", "k", "v", "qkv", "q_a", "kv_a"}) | DELTA_INPUT_ROLES
LATENT_ROLES = frozenset({"q_b", "kv_b"})
MLP_INPUT_ROLES = frozenset({"gate", "up", "gate_up", "fc_in"})
# Linears that read the layer's normed input (the attention and MLP inputs).
NORM_READER_ROLES = ATTENTION_INPUT_ROLES | MLP_INPUT_ROLES
ATTENTION_ROLES = ATTENTION_INPUT_ROLES | LATENT_ROLES | {"o", "delta_out"}
# the attention modules whose gradients reach q, k and v (MLA's kv_a and kv_b make both k and v)
Q_SIDE, K_SIDE, V_SIDE = (frozenset({"q", "qkv", "q_a", "q_b"}), frozenset({"k", "qkv", "kv_a", "kv_b"}),
                          frozenset({"v", "qkv", "kv_a", "kv_b"}))
# a mixture of experts' shared expert (a gated MLP beside the routed experts) and its gate
SHARED_INPUT_ROLES = frozenset({"shared_gate", "shared_up", "shared_gate_up"})
SHARED_ROLES = SHARED_INPUT_ROLES | {"shared_down", "shared_scale"}
# the Linears of the mixers that are not attention: Mamba-2 (ssm_*) and short convolutions (conv_*)
MIXER_INPUT_ROLES = frozenset({"ssm_in", "conv_in"})
MIXER_ROLES = MIXER_INPUT_ROLES | {"ssm_out", "conv_out"}
# Gemma 4's per-layer inputs (PLE): each layer gates a p-wide per-layer input by its own output
PLE_ROLES = frozenset({"ple_gate", "ple_proj"})
# a router that is a plain nn.Linear inside the router module (Gemma 4's router.proj, :attr:`MoE.router_linear`)
ROUTER_ROLES = frozenset({"router"})
# DeepSeek-V3.2's sparse-attention indexer (:class:`Indexer`): its Linears run under torch.no_grad,
# so they keep nothing for backward and neither they nor their adapters get a gradient
INDEXER_ROLES = frozenset({"index_q", "index_k", "index_w"})
INDEXER_SITES = frozenset({"index_k"})
# Linears bitsandbytes leaves unquantized: transformers' 4-bit quantizer skips the modules a model
# class keeps in fp32 (_keep_in_fp32_modules: DeepSeek-V3.2's indexer.weights_proj; tracer: a plain
# nn.Linear, fp32 after prepare_model_for_kbit_training, beside 4-bit wq_b and wk)
UNQUANTIZED_ROLES = frozenset({"index_w"})
# every role the formulas know
ROLES = tuple(sorted(NORM_READER_ROLES | ATTENTION_ROLES | SHARED_ROLES | MIXER_ROLES | PLE_ROLES | ROUTER_ROLES
                     | INDEXER_ROLES | {"down"}))


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
    # heads with a weight of their own (Cohere's qk-norm: a (heads, head_dim) weight); 1: one
    # weight of ``size`` shared by every head
    weight_heads: int = 1
    scale: bool = True  # False: no weight at all (Gemma 4's v_norm, with_scale=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """Its weight's shape (and its bias's)."""
        return (self.weight_heads, self.size) if self.weight_heads > 1 else (self.size,)

    @property
    def params(self) -> int:
        return self.size * self.weight_heads * (2 if self.bias else 1) if self.scale else 0


@dataclass(frozen=True)
class Traits:
    """How a decoder layer computes, as far as memory is concerned."""

    # "rms"; "rms_fp32_out": the weight multiplies the fp32 normalized input (Gemma's
    # x_norm * (1 + w.float()), OLMo-2's (w * x_norm).to(dtype)), so that product is fp32;
    # "layer": nn.LayerNorm with a bias (StarCoder2), fp32 in and out under CUDA autocast;
    # "centered": Cohere's LayerNorm without a bias, written out in fp32 ops (x - mean twice,
    # rsqrt, the fp32 weight times the normalized input, cast back to the input's dtype)
    norm: str = "rms"
    # "pre", "sandwich" (pre and post), "post" (OLMo-2: after each block only), "parallel"
    # (Cohere: attention and MLP both read the one input norm's output, and their outputs join
    # the residual in one sum)
    placement: str = "pre"
    # "none", "head" (over head_dim, after the reshape), "full" (over q_dim / kv_dim),
    # "head_weights" (over head_dim, each head its own weight: Cohere's (heads, head_dim))
    qk_norm: str = "none"
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
    # Llama 4 (modeling_llama4.Llama4TextAttention): "complex" where RoPE multiplies q and k as
    # fp32 complex numbers (apply_rotary_emb), "none" on its no-RoPE layers; else "half" (rotate_half)
    rope: str = "half"
    qk_l2_norm: bool = False  # an L2 norm without weights over each head of q and k after RoPE (Llama 4's use_qk_norm)
    attn_temperature: bool = False  # q times an fp32 per-position scale on no-RoPE layers (Llama 4's attn_temperature_tuning)
    # peft 0.21 rewrites all-linear (and MLP module names) for the model type's checkpoint
    # conversion pattern (transformers' conversion_mapping "mixtral" / "qwen2_moe"): the MLP's
    # gate_proj / up_proj / down_proj names become the fused experts' target_parameters, so no
    # Linear of an MLP role keeps an adapter in any layer (a dense layer's MLP, a shared expert's)
    peft_moe_conversion: bool = False
    # the MLP's activation where its saved set is not a Linear output's alone: "xielu" (Apertus's
    # xIELU, with two learned scalars alpha_p and alpha_n per layer); "" for SiLU / GELU
    activation: str = ""
    # the norm computes x * pow(mean(x^2) + eps, -0.5) (Gemma 4): it keeps mean(x^2) + eps and its
    # power, two fp32 values per row, where rsqrt keeps one
    pow_norm: bool = False
    # the layer reads the keys and values an earlier layer of its attention type made (Gemma 4's
    # num_kv_shared_layers): no k / v projections or norms of its own, and nothing of k, v kept twice
    kv_shared: bool = False
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
    # how the router weighs the experts: "softmax" (softmax over every expert's logit, the top-k
    # of it: Mixtral, Qwen3-MoE); "sigmoid" (Llama 4's Llama4Router: top-k of the logits, sigmoid
    # of those scattered into a -inf row); "sparsemixer" (Phi-3.5-MoE: top-2 by two masked
    # softmaxes with Gumbel sampling in training, transformers 5.23 modeling_phimoe.sparsemixer);
    # "sigmoid_group": DeepSeek-V3's fp32 router (the input and weight cast to fp32), sigmoid
    # scores plus the e_score_correction_bias buffer choose the experts within the top
    # ``topk_groups`` of ``groups`` expert groups, the chosen sigmoid scores are the weights,
    # renormalized and scaled by routed_scaling_factor (GLM-4.5, DeepSeek-V3)
    routing: str = "softmax"
    # how the tokens reach the experts: "grouped" (transformers' grouped_mm path: the T*k
    # (token, expert) pairs sorted by expert) or "dense" (Llama 4's Llama4TextMoe: every expert
    # runs on every token, pre-scaled by its router score, 0 for the experts not chosen: E*T rows)
    dispatch: str = "grouped"
    jitter: bool = False  # Phi-3.5-MoE's input_jitter_noise: the MoE input times uniform noise, twice, in training
    # the router is an nn.Linear subclass whose forward returns a tuple (Llama4Router,
    # PhimoeTopKRouter): peft cannot wrap it, so all-linear leaves it out (probes.build.routing_linears)
    router_tuple: bool = False
    # the shared expert runs before the routed experts (Qwen2-MoE) or after them (Llama4TextMoe)
    shared_first: bool = True
    shared_fused: bool = False  # the shared expert's gate and up are one Linear (Granite-4.0-H's input_linear)
    # the router's softmax runs over the top-k logits only, cast to the compute dtype
    # (GraniteMoeHybridTopKRouter.forward), not over every expert's logit
    router_topk_softmax: bool = False
    shared_name: str = "shared_expert"  # the shared expert's module inside the MLP (DeepSeek-V3, GLM-4.5: "shared_experts")
    # the MLP module names peft's conversion maps to the router, gate_up (the gate and up names)
    # and down (transformers' conversion_mapping: "qwen2_moe"'s pattern; Mixtral's gate, w1, w3, w2)
    peft_names: tuple[str, str, str, str] = ("gate", "gate_proj", "up_proj", "down_proj")
    groups: int = 1  # n_group
    topk_groups: int = 1  # topk_group
    # Gemma 4 (transformers 5.23 Gemma4TextRouter): the router module normalizes its input (an
    # RMSNorm without a weight), scales it by its ``scale`` (h) and h^-1/2, projects it with a
    # plain nn.Linear (``proj``, role "router" in Layer.linears: all-linear adapts it, 4-bit packs
    # it) and scales the renormalized top-k weights by ``per_expert_scale`` (E)
    router_linear: bool = False
    # Gemma 4 (Gemma4TextDecoderLayer): the layer's dense MLP (its gate / up / down Linears) runs
    # beside the experts, each output through its own norm before the two are summed
    beside_dense: bool = False
    prefix: str = "mlp."  # the experts' module path inside the layer ("" for Gemma 4's layers.N.experts)


@dataclass(frozen=True)
class Mamba2:
    """A Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs"; transformers 5.23
    modeling_granitemoehybrid.GraniteMoeHybridMambaLayer, modeling_nemotron_h.NemotronHMamba2Mixer):
    in_proj (role ssm_in) makes z (d_inner), xBC (conv_dim = d_inner + 2*G*N) and dt (H); a
    depthwise causal conv1d of width K over xBC, then SiLU; the chunked selective scan over
    H heads of P dims with G groups of N-dim B and C; y * silu(z) through a gated RMSNorm
    (groups of d_inner / G); out_proj (role ssm_out)."""

    heads: int  # H
    head_dim: int  # P
    state: int  # N
    groups: int  # G
    conv_kernel: int  # K
    conv_bias: bool
    chunk: int  # the scan's chunk length

    @property
    def inner(self) -> int:
        """d_inner = H * P."""
        return self.heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.inner + 2 * self.groups * self.state

    @property
    def projection(self) -> int:
        """in_proj's output width: z, xBC and dt."""
        return self.inner + self.conv_dim + self.heads


@dataclass(frozen=True)
class ShortConv:
    """LFM2's gated short convolution (transformers 5.23 modeling_lfm2.Lfm2ShortConv): in_proj
    (role conv_in, h -> 3h) gives B, C, x; B*x runs through a depthwise causal conv of width K;
    C times its output goes to out_proj (role conv_out)."""

    width: int  # h
    kernel: int  # K (conv_L_cache)
    bias: bool


@dataclass(frozen=True)
class MLA:
    """DeepSeek-V3's multi-head latent attention (transformers 5.23 DeepseekV3Attention): q
    through a latent of ``q_rank`` (q_a_proj, q_a_layernorm, q_b_proj; a plain q_proj when
    q_lora_rank is None), k and v through one of ``kv_rank`` (kv_a_proj_with_mqa, whose last
    ``rope`` outputs are a key every head shares, kv_a_layernorm, kv_b_proj). Every head's q
    and k are ``nope + rope`` wide, its v ``v`` wide."""

    q_rank: int | None
    kv_rank: int
    nope: int
    rope: int
    v: int

    @property
    def qk(self) -> int:
        return self.nope + self.rope


@dataclass(frozen=True)
class Indexer:
    """DeepSeek-V3.2's sparse-attention indexer (DSA; transformers 5.23
    modeling_deepseek_v32.DeepseekV32Indexer, DeepseekV32Attention.forward): ``heads`` index heads
    of ``head_dim`` (their first qk_rope_head_dim dims rotated) score every key, one per token, and
    each query keeps its ``topk`` best keys; the attention mask then masks every other key. Its
    Linears (roles index_q, index_k, index_w) and k_norm (site index_k) run under torch.no_grad:
    they keep nothing for backward, and no gradient reaches them or their adapters (no indexer
    loss either: transformers trains only the main model through it)."""

    heads: int  # index_n_heads
    head_dim: int  # index_head_dim
    topk: int  # index_topk


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
    """One decoder layer (every layer of its kind alike): its Linears in forward order, norms,
    traits, its mixture of experts and its mixer when that is not attention (Mamba-2, a short
    convolution)."""

    linears: tuple[Linear, ...]
    norms: tuple[Norm, ...]
    traits: Traits = field(default_factory=Traits)
    moe: MoE | None = None
    mixer: Mamba2 | ShortConv | None = None
    mla: MLA | None = None
    deltanet: DeltaNet | None = None  # a Gated DeltaNet in place of attention (its kind "linear_attention")
    indexer: Indexer | None = None  # DeepSeek-V3.2's sparse-attention indexer beside its latent attention

    def by_role(self, *roles: str) -> tuple[Linear, ...]:
        return tuple(lin for lin in self.linears if lin.role in roles)

    def norms_at(self, *sites: str) -> tuple[Norm, ...]:
        return tuple(n for n in self.norms if n.site in sites)


# The layer kinds the formulas know. A model is a sequence of kinds (planner.model.specs.ModelSpec):
# "decoder" where every layer is alike; "sliding_attention" and "full_attention" where some
# layers attend within a window ("chunked_attention": Llama 4's chunks); "dense" and "moe" where
# the first layers have a dense MLP and the others a mixture of experts (first_k_dense_replace:
# DeepSeek-V3, GLM-4.5), their Linears differ; in the hybrids (planner.model.hybrids) "mamba2"
# (a Mamba-2 mixer), "short_conv" (LFM2's gated short convolution), "attention" (attention in a
# hybrid) and "mlp" (an MLP-only layer, Nemotron-H); "shared_kv_" ones where a layer reads an
# earlier layer's keys and values (Gemma 4); "linear_attention": a Gated DeltaNet layer (Qwen3-Next,
# Qwen3.5), beside their gated "full_attention" ones. A kind the formulas do not know is refused by name.
SHARED_KV_PREFIX = "shared_kv_"
KNOWN_KINDS = ("decoder", "sliding_attention", "full_attention", "chunked_attention", "dense", "moe", "mamba2",
               "short_conv", "attention", "mlp", SHARED_KV_PREFIX + "sliding_attention",
               SHARED_KV_PREFIX + "full_attention", "linear_attention")
# Where a model's layers differ in their MLP too (Llama 4 Maverick: a dense MLP between MoE
# layers), a kind's name is its attention kind and its MLP kind joined by "/": "chunked_attention/dense"
MLP_KINDS = ("dense", "moe")


@dataclass(frozen=True)
class LayerKind:
    """One kind of decoder layer and the indices of the layers of that kind.

    ``head_dim``, ``kv_heads`` and ``intermediate`` are the kind's own widths where they differ
    from the model's (Gemma 4's full-attention layers: head_dim 512 beside the sliding layers'
    256, fewer kv heads; its KV-shared layers' double-wide MLP); None: the model's. The kind's
    view of the model (ModelSpec.by_kind) carries them, so every per-layer term reads them."""

    name: str
    layer: Layer
    indices: tuple[int, ...]
    head_dim: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None

    @property
    def count(self) -> int:
        return len(self.indices)

    @property
    def attention_type(self) -> str:
        """The attention type (its RoPE table and mask): the name without the shared-KV prefix."""
        return self.name.removeprefix(SHARED_KV_PREFIX)


class UnknownLayerKind(ValueError):
    """A layer kind or role the formulas do not know (the message names it)."""


def check_known(kinds: tuple[LayerKind, ...]) -> None:
    """Refuse, in one line naming it, a layer kind or a Linear role the formulas do not know."""
    for kind in kinds:
        attention, _, mlp = kind.name.partition("/")
        if attention not in KNOWN_KINDS or (mlp and mlp not in MLP_KINDS):
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

    ``attention``: "split" (q_proj, k_proj, v_proj, o_proj), "fused" (qkv_proj, o_proj) or
    "mla" (multi-head latent attention, :class:`MLA`).
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
    # Llama 4's layers (see :func:`_llama4_kinds`): chunked-attention layers with RoPE and no-RoPE
    # full-attention layers, MoE layers every interleave_moe_layer_step-th, the others a dense MLP
    llama4_layers: bool = False
    lm_head_bias_field: str | None = None  # the config field that gives lm_head a bias (Phi-3.5-MoE's lm_head_bias)
    hybrid: str | None = None  # a hybrid family whose layer kinds planner.model.hybrids describes
    # a mixture of experts whose first layers are dense (config first_k_dense_replace, the
    # family's default when omitted): a "dense" kind (a gated MLP intermediate_size wide) before a "moe" kind
    dense_first_default: int | None = None
    # MoE config fields the family's config defaults when the config omits them
    moe_defaults: tuple[tuple[str, object], ...] = ()
    # a config field that adds per-head q/k norms (GLM-4.5's and Cohere's use_qk_norm), and whether
    # each head has its own weight (Cohere: q_norm (heads, head_dim), k_norm (kv_heads, head_dim))
    # or all heads share one of head_dim (GLM-4.5: the "head" qk_norm trait)
    qk_norm_field: str | None = None
    qk_norm_weight_per_head: bool = False
    head_dim_field: str | None = None  # the config field head_dim defaults to (DeepSeek-V3: qk_rope_head_dim)
    plain_names: tuple[str, str] = ("c_fc", "c_proj")  # a plain MLP's two Linears (Apertus: up_proj, down_proj)
    # "uniform": every kind has the model's widths; "gemma4": per-kind widths, KV-shared kinds and
    # per-layer inputs read from the config (:func:`_gemma4_kinds`)
    layout: str = "uniform"
    # a hybrid of Gated DeltaNet ("linear_attention") and gated full-attention layers by the config's
    # layer_types: "split" (Qwen3.5: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) or "fused"
    # (Qwen3-Next: in_proj_qkvz, in_proj_ba); None: attention only
    deltanet: str | None = None
    # the config field of the dense MLP's width (Qwen3.5-MoE has no dense MLP and no intermediate_size)
    intermediate_field: str = "intermediate_size"
    indexer: bool = False  # DeepSeek-V3.2's sparse-attention indexer beside the latent attention (:class:`Indexer`)


SANDWICH = (("input_layernorm", "attn_in"), ("post_attention_layernorm", "attn_out"),
            ("pre_feedforward_layernorm", "mlp_in"), ("post_feedforward_layernorm", "mlp_out"))

# model_type -> layout (transformers 5.23 modeling files).
POST_NORM = (("post_attention_layernorm", "attn_out"), ("post_feedforward_layernorm", "mlp_out"))
# Cohere's one norm, read by attention and the MLP alike
PARALLEL_NORM = (("input_layernorm", "attn_in"),)
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
    # Gemma 4 (modeling_gemma4.py, configuration_gemma4.py; the text decoder of the multimodal
    # "gemma4" config too): Gemma-3's sandwich layer with per-head q/k norms and a weightless
    # per-head v_norm; full-attention layers with their own head_dim (global_head_dim, default
    # 512) and kv heads (num_global_key_value_heads, with attention_k_eq_v: no v_proj, v is k_proj's
    # output), proportional RoPE there; the last num_kv_shared_layers layers read an earlier
    # layer's keys and values (double-wide MLP with use_double_wide_mlp); per-layer inputs (PLE)
    # gated into every layer. Its RMSNorm multiplies the weight in fp32 (no 1 +) and takes
    # pow(mean + eps, -0.5) (see :func:`_gemma4_kinds`).
    "gemma4_text": Architecture(norm_sites=SANDWICH, tie_default=True, layout="gemma4", head_dim_default=256,
                                traits=Traits(norm="rms_fp32_out", placement="sandwich", qk_norm="head",
                                              rope_tables=2, pow_norm=True)),
    # The hybrids (planner.model.hybrids): Mamba-2 or short-convolution layers between attention ones.
    # Granite-4.0-H (modeling_granitemoehybrid.py): every layer a mixer (Mamba-2 or attention
    # without RoPE, position_embedding_type "nope") then an MLP (shared_mlp, with experts beside it
    # in H-Tiny / H-Small); Granite's embedding and residual multipliers.
    "granitemoehybrid": Architecture(hybrid="granitemoehybrid", tie_default=True,
                                     traits=Traits(embedding_multiplier=True, residual_multiplier=True)),
    # Nemotron-H (modeling_nemotron_h.py): one block per layer, a norm then a Mamba-2 mixer, attention
    # (no RoPE) or a relu2 MLP (layers_block_type or hybrid_override_pattern). Its NemotronHRMSNorm
    # multiplies the weight in fp32 and casts the product back (OLMo-2's norm).
    "nemotron_h": Architecture(hybrid="nemotron_h", head_dim_default=128,
                               traits=Traits(rope_tables=0, norm="rms_fp32_out")),
    # LFM2 (modeling_lfm2.py): a gated short convolution or attention with per-head q/k norms
    # (layer_types or full_attn_idxs), each then a SwiGLU MLP (w1, w3, w2); RoPE.
    "lfm2": Architecture(hybrid="lfm2", tie_default=True, traits=Traits(qk_norm="head")),
    # Cohere (Command-R; modeling_cohere.py): one LayerNorm without a bias (CohereLayerNorm,
    # centered, in fp32 ops) whose output both attention and the gated MLP read, their outputs
    # summed with the residual in one add; RoPE on interleaved pairs, in fp32 (q and k upcast,
    # the rotated ones cast back); with use_qk_norm that LayerNorm over each head's head_dim,
    # a weight per head; the logits scaled by logit_scale; tied embeddings by default; o_proj's
    # bias with attention_bias.
    "cohere": Architecture(norm_sites=PARALLEL_NORM, tie_default=True,
                           qk_norm_field="use_qk_norm",
                           qk_norm_weight_per_head=True, traits=Traits(norm="centered", placement="parallel")),
    # Cohere-2 (Command-R7B; modeling_cohere2.py): Cohere's layer without qk-norm; three sliding
    # layers (RoPE) then a full one (no RoPE: the q_proj / k_proj outputs go to attention,
    # the same bytes as the rotated ones), by layer_types or sliding_window_pattern (4).
    "cohere2": Architecture(norm_sites=PARALLEL_NORM, tie_default=True, sliding="pattern", sliding_pattern=4,
                            traits=Traits(norm="centered", placement="parallel")),
    # Apertus (modeling_apertus.py): Llama's attention with per-head q/k RMSNorms (after the
    # transpose), a plain MLP up_proj -> xIELU -> down_proj (no gate), its norms named
    # attention_layernorm and feedforward_layernorm.
    "apertus": Architecture(norm_sites=(("attention_layernorm", "attn_in"), ("feedforward_layernorm", "mlp_in")),
                            mlp="plain", plain_names=("up_proj", "down_proj"),
                            traits=Traits(qk_norm="head", activation="xielu")),
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
    # GLM-4.5 / GLM-4.5-Air (modeling_glm4_moe.py, configuration_glm4_moe.py): Llama's pre-norm
    # layer with q/k/v biases (attention_bias) and none on o_proj, per-head q/k norms with
    # use_qk_norm, RoPE on the first half of each head (partial_rotary_factor defaults to 0.5;
    # rotate_half, the pass-through half joined with torch.cat); the first first_k_dense_replace
    # layers (default 1) have a dense gated MLP, the others DeepSeek-V3's mixture of experts
    # (see _deepseek_moe; n_shared_experts defaults to 1, n_group and topk_group to 1).
    "glm4_moe": Architecture(out_bias=False, moe="deepseek", dense_first_default=1, qk_norm_field="use_qk_norm",
                             moe_defaults=(("n_shared_experts", 1), ("n_group", 1), ("topk_group", 1),
                                           ("n_routed_experts", 128), ("num_experts_per_tok", 8)),
                             traits=Traits(rotary_concat=True, rotary_fraction=0.5)),
    # DeepSeek-V3 / Kimi-K2 (modeling_deepseek_v3.py, configuration_deepseek_v3.py): multi-head
    # latent attention (:class:`MLA`; q is the cat of its nope and rotated parts, the rotation
    # interleaved by default, rope_interleave) in Llama's pre-norm layer; the first
    # first_k_dense_replace layers (default 3) dense, the others the sigmoid-routed experts of
    # _deepseek_moe (n_group 8, topk_group 4 by default). The config's head_dim is
    # qk_rope_head_dim (the rotated width, which sizes RoPE's tables).
    "deepseek_v3": Architecture(attention="mla", moe="deepseek", dense_first_default=3, head_dim_field="qk_rope_head_dim",
                                moe_defaults=(("n_shared_experts", 1), ("n_group", 8), ("topk_group", 4),
                                              ("n_routed_experts", 256), ("num_experts_per_tok", 8)),
                                traits=Traits(rotary_concat=True)),
    # DeepSeek-V3.2 (modeling_deepseek_v32.py, configuration_deepseek_v32.py): DeepSeek-V3's layer
    # with the sparse-attention indexer in every layer's attention (:class:`Indexer`, see _indexer);
    # q always through its latent (no q_lora_rank None form).
    "deepseek_v32": Architecture(attention="mla", moe="deepseek", dense_first_default=3,
                                 head_dim_field="qk_rope_head_dim", indexer=True,
                                 moe_defaults=(("n_shared_experts", 1), ("n_group", 8), ("topk_group", 4),
                                               ("n_routed_experts", 256), ("num_experts_per_tok", 8)),
                                 traits=Traits(rotary_concat=True)),
    "gpt_oss": Architecture(traits=Traits(norm="rms_fp32_out", eager_attention=True, attention_sinks=True),
                            sliding="alternate", attention_bias_default=True, moe="gpt_oss"),
    # Llama 4's text decoder (transformers 5.23 modeling_llama4, configuration_llama4.Llama4TextConfig):
    # Llama's pre-norm layer; three layers in four attend in chunks of attention_chunk_size with
    # RoPE as fp32 complex products and (use_qk_norm) an L2 norm without weights over each head,
    # every 4th (no_rope_layers) attends to everything without RoPE, q scaled per position
    # (attn_temperature_tuning); MoE layers (every interleave_moe_layer_step-th: Scout all,
    # Maverick every 2nd) have a shared expert of Linears beside experts that see every token
    # (top-1 sigmoid routing), the others a dense gated MLP intermediate_size_mlp wide.
    "llama4_text": Architecture(moe="llama4", llama4_layers=True, head_dim_default=128),
    # Phi-3.5-MoE (modeling_phimoe.py): nn.LayerNorm with a bias before attention and MoE and at
    # the end, q/k/v/o biases (attention_bias), 16 experts top-2 chosen by sparsemixer (Gumbel
    # sampling in training), every layer in the sliding window when set, a bias on lm_head
    # (lm_head_bias), and the MoE input times uniform noise in training (input_jitter_noise).
    "phimoe": Architecture(traits=Traits(norm="layer"), moe="phimoe", sliding="all", lm_head_bias_field="lm_head_bias"),
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
    as kinds: one "decoder" kind where every layer is alike; "sliding_attention" and
    "full_attention" where some layers attend within a window (the config's layer_types, or
    the family's rule); "dense" and "moe" where the first first_k_dense_replace layers have a
    dense MLP before the mixture-of-experts layers (DeepSeek-V3, GLM-4.5)."""
    if arch.deltanet:
        return _hybrid(arch, config, dims)
    if arch.layout == "gemma4":
        return _gemma4_kinds(arch, config, dims)
    if arch.llama4_layers:
        return _llama4_kinds(arch, config, dims)
    if arch.hybrid:
        from planner.model import hybrids

        return hybrids.describe(arch, config, dims)
    layer = _layer(arch, config, dims)
    window = config.get("sliding_window")
    sliding = _sliding_indices(arch, config, dims.layers) if isinstance(window, int) and window > 0 else ()
    everything = tuple(range(dims.layers))
    if arch.dense_first_default is not None:
        first = _dense_first(arch, config, dims.layers)
        dense = replace(_layer(arch, config, dims, moe=False), traits=layer.traits)
        return tuple(LayerKind(name, lay, idx) for name, lay, idx in
                     (("dense", dense, everything[:first]), ("moe", layer, everything[first:])) if idx)
    if not sliding:
        return (LayerKind("decoder", layer, everything),)
    windowed = LayerKind("sliding_attention", replace(layer, traits=replace(layer.traits, sliding_window=window)),
                         sliding)
    full = tuple(i for i in everything if i not in set(sliding))
    return (windowed,) + ((LayerKind("full_attention", layer, full),) if full else ())


def _dense_first(arch: Architecture, config: dict, layers: int) -> int:
    """How many first layers have a dense MLP (first_k_dense_replace, else the family's default)."""
    first = config.get("first_k_dense_replace", arch.dense_first_default)
    if first is None:
        first = arch.dense_first_default
    if not isinstance(first, int) or isinstance(first, bool) or first < 0:
        raise LayoutError(f"config field 'first_k_dense_replace' must be a non-negative integer, got {first!r}")
    return min(first, layers)


def _layer(arch: Architecture, config: dict, dims: Dims, moe: bool = True) -> Layer:
    """The module layout and traits of one decoder layer of ``arch`` (``moe`` False: the dense
    layer of a family whose first layers are dense)."""
    h, inter, q_dim, kv_dim = dims.hidden, dims.intermediate, dims.q_dim, dims.kv_dim
    attn_bias = bool(config.get("attention_bias", arch.attention_bias_default))
    mlp_bias = bool(config.get("mlp_bias", False))
    if arch.bias_field:
        attn_bias = mlp_bias = bool(config.get(arch.bias_field, arch.bias_default))
    qkv_bias = bool(config.get("qkv_bias", arch.qkv_bias)) or attn_bias
    mla = _mla(config, dims) if arch.attention == "mla" else None
    indexer = _indexer(config, mla) if arch.indexer else None
    if mla is not None:
        attention = _mla_linears(mla, h, dims.heads, attn_bias) + _indexer_linears(indexer, mla, h)
        q_dim = dims.heads * mla.v  # o_proj's input
    elif arch.attention == "fused":
        attention = (Linear("qkv_proj", h, q_dim + 2 * kv_dim, qkv_bias, "qkv"),)
    else:
        attention = (Linear("q_proj", h, q_dim, qkv_bias, "q"), Linear("k_proj", h, kv_dim, qkv_bias, "k"),
                     Linear("v_proj", h, kv_dim, qkv_bias, "v"))
    out_bias = bool(config.get(arch.out_bias_field, False)) if arch.out_bias_field else attn_bias
    if arch.out_bias is not None:
        out_bias = arch.out_bias
    attention += (Linear("o_proj", q_dim, h, out_bias, "o"),)
    moe = _moe(arch.moe, {**dict(arch.moe_defaults), **config}, dims) if arch.moe and moe else None
    if moe is not None:
        mlp = _shared_expert(moe, h)
    elif arch.mlp == "fused_gated":
        mlp = (Linear("gate_up_proj", h, 2 * inter, mlp_bias, "gate_up"),)
    elif arch.mlp == "plain":
        mlp = (Linear(arch.plain_names[0], h, inter, mlp_bias, "fc_in"),)
    else:
        mlp = (Linear("gate_proj", h, inter, mlp_bias, "gate"), Linear("up_proj", h, inter, mlp_bias, "up"))
    if moe is None:
        mlp += (Linear(arch.plain_names[1] if arch.mlp == "plain" else "down_proj", inter, h, mlp_bias, "down"),)
    layer_norm = arch.traits.norm == "layer"
    norms = tuple(Norm(name, site, h, bias=layer_norm) for name, site in arch.norm_sites)
    # the config field that turns per-head q/k norms on (use_qk_norm)
    qk_norm_on = bool(arch.qk_norm_field and config.get(arch.qk_norm_field))
    qk_norm = "head" if qk_norm_on and not arch.qk_norm_weight_per_head else arch.traits.qk_norm
    if mla is not None:
        norms += tuple(Norm(name, site, size) for name, site, size in
                       (("q_a_layernorm", "q_a", mla.q_rank), ("kv_a_layernorm", "kv_a", mla.kv_rank)) if size)
    if indexer is not None:
        norms += (Norm("indexer.k_norm", "index_k", indexer.head_dim, bias=True),)
    if qk_norm == "head":
        norms += (Norm("q_norm", "q", dims.head_dim, per_head=True), Norm("k_norm", "k", dims.head_dim, per_head=True))
    elif arch.traits.qk_norm == "full":
        norms += (Norm("q_norm", "q", q_dim), Norm("k_norm", "k", kv_dim))
    elif qk_norm_on:  # a weight per head
        norms += (Norm("q_norm", "q", dims.head_dim, per_head=True, weight_heads=dims.heads),
                  Norm("k_norm", "k", dims.head_dim, per_head=True, weight_heads=dims.kv_heads))
    # the traits a config sets on top of its family's
    changes: dict = {"qk_norm": qk_norm} if qk_norm != arch.traits.qk_norm else {}
    rotary = config.get("partial_rotary_factor") or (config.get("rope_parameters") or {}).get("partial_rotary_factor")
    if rotary:
        changes["rotary_fraction"] = float(rotary)
    if config.get("attn_logit_softcapping"):
        changes["eager_attention"] = True
    if config.get("final_logit_softcapping"):
        changes["logit_softcapping"] = True
    if arch.traits.activation and config.get("hidden_act", arch.traits.activation) != arch.traits.activation:
        changes["activation"] = ""  # Apertus with another hidden_act: transformers' ACT2FN one
    if arch.moe in PEFT_CONVERTED:
        changes["peft_moe_conversion"] = True
    return Layer(linears=attention + mlp, norms=norms, traits=replace(arch.traits, **changes), moe=moe, mla=mla,
                 indexer=indexer)


def _positive_ints(config: dict, names, needs: str = "the architecture table", defaults: dict | None = None,
                   least: dict | None = None) -> dict[str, int]:
    """The config's integer fields ``names`` (``defaults`` where omitted), each at least 1 (or
    ``least[name]``); a LayoutError naming the first field that is missing or not such an integer."""
    values = {}
    for name in names:
        value = config.get(name, (defaults or {}).get(name))
        if value is None:
            raise LayoutError(f"config.json lacks the field {name!r}, which {needs} needs")
        if not isinstance(value, int) or isinstance(value, bool) or value < (least or {}).get(name, 1):
            raise LayoutError(f"config field {name!r} must be a positive integer, got {value!r}")
        values[name] = value
    return values


def _mla(config: dict, dims: Dims) -> MLA:
    """The latent attention of a DeepSeek-V3 config (configuration_deepseek_v3.py's fields)."""
    values = _positive_ints(config, ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    q_rank = config.get("q_lora_rank")
    if q_rank is not None and (not isinstance(q_rank, int) or isinstance(q_rank, bool) or q_rank < 1):
        raise LayoutError(f"config field 'q_lora_rank' must be a positive integer or null, got {q_rank!r}")
    if dims.kv_heads != dims.heads:
        raise LayoutError(f"num_key_value_heads {dims.kv_heads} differs from num_attention_heads {dims.heads}: "
                          "multi-head latent attention makes k and v for every head")
    return MLA(q_rank, values["kv_lora_rank"], values["qk_nope_head_dim"], values["qk_rope_head_dim"],
               values["v_head_dim"])


def _mla_linears(mla: MLA, h: int, heads: int, bias: bool) -> tuple[Linear, ...]:
    """The latent attention's Linears in forward order (biases on q_a, kv_a and o_proj with
    attention_bias; o_proj is appended by the caller)."""
    if mla.q_rank is None:
        q = (Linear("q_proj", h, heads * mla.qk, False, "q"),)
    else:
        q = (Linear("q_a_proj", h, mla.q_rank, bias, "q_a"), Linear("q_b_proj", mla.q_rank, heads * mla.qk, False, "q_b"))
    return q + (Linear("kv_a_proj_with_mqa", h, mla.kv_rank + mla.rope, bias, "kv_a"),
                Linear("kv_b_proj", mla.kv_rank, heads * (mla.nope + mla.v), False, "kv_b"))


INDEXER_FIELDS = ("index_n_heads", "index_head_dim", "index_topk")


def _indexer(config: dict, mla: MLA | None) -> Indexer:
    """DeepSeek-V3.2's indexer from its config fields (configuration_deepseek_v32.py: index_n_heads,
    index_head_dim, index_topk; each required here, none defaulted). It reads the q latent
    (q_lora_rank must be set) and rotates its first qk_rope_head_dim dims."""
    values = _positive_ints(config, INDEXER_FIELDS)
    if mla is None or mla.q_rank is None:
        raise LayoutError("config field 'q_lora_rank' must be a positive integer: DeepSeek-V3.2's attention and "
                          "its indexer read the q latent")
    if values["index_head_dim"] < mla.rope:
        raise LayoutError(f"config field 'index_head_dim' {values['index_head_dim']} must be at least "
                          f"qk_rope_head_dim {mla.rope}: the indexer rotates that many of its dims")
    return Indexer(values["index_n_heads"], values["index_head_dim"], values["index_topk"])


def _indexer_linears(indexer: Indexer | None, mla: MLA, h: int) -> tuple[Linear, ...]:
    """The indexer's Linears (no biases), in forward order; none without an indexer."""
    if indexer is None:
        return ()
    return (Linear("indexer.wq_b", mla.q_rank, indexer.heads * indexer.head_dim, False, "index_q"),
            Linear("indexer.wk", h, indexer.head_dim, False, "index_k"),
            Linear("indexer.weights_proj", h, indexer.heads, False, "index_w"))


class LayoutError(ValueError):
    """A config the architecture table cannot describe (the message names the field)."""


class NotPlannedLayout(LayoutError):
    """A valid config whose layers the formulas do not plan yet (Gemma 4 layers of one kind with
    different per_layer_config widths):
    the tracer measures it (`probe --device fake`)."""


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
    values = _positive_ints(config, DELTANET_FIELDS, defaults=DELTANET_DEFAULTS)
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
    i, name = moe.shared_intermediate, moe.shared_name
    out = (Linear(f"{name}.gate_proj", h, i, False, "shared_gate"),
           Linear(f"{name}.up_proj", h, i, False, "shared_up"),
           Linear(f"{name}.down_proj", i, h, False, "shared_down"))
    if moe.shared_scale:
        out += (Linear("shared_expert_gate", h, 1, False, "shared_scale"),)
    return out


def _moe(kind: str, config: dict, dims: Dims) -> MoE:
    """The mixture of experts of a Mixtral, Qwen3-MoE or gpt-oss config (transformers 5.23 defaults).

    peft's all-linear reaches the router and the experts only for the families whose
    checkpoint-conversion pattern it knows (Mixtral, Qwen3-MoE: it rewrites the targets to
    ``target_parameters``); for gpt-oss it adapts the attention Linears only."""
    experts = config.get("num_local_experts") or config.get("num_experts") or config.get("n_routed_experts")
    top_k = config.get("num_experts_per_tok") or config.get("experts_per_token")
    inter = config.get("moe_intermediate_size") if kind in ("qwen", "qwen2", "deepseek", "qwen_next", "qwen3_5_moe") \
        else dims.intermediate
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
        return MoE(experts, top_k, inter, renormalize=True, weights_fp32=True, peft_converts=True,
                   peft_names=("gate", "w1", "w3", "w2"))
    if kind == "deepseek":
        return _deepseek_moe(config, experts, top_k, inter)
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
    if kind == "llama4":
        # Llama4TextMoe: the shared expert is a Llama4TextMLP intermediate_size wide; peft's
        # all-linear adapts its Linears, not the experts (and the router is left out: see
        # probes.build.routing_linears)
        return MoE(experts, top_k, inter, router="router", routing="sigmoid", dispatch="dense",
                   shared_intermediate=inter, router_tuple=True, shared_first=False)
    if kind == "phimoe":
        # PhimoeSparseMoeBlock: its router is nn.Linear (left out of all-linear as Llama 4's);
        # the experts keep the grouped_mm path
        return MoE(experts, top_k, inter, router="router", routing="sparsemixer",
                   jitter=bool(config.get("input_jitter_noise") or 0.0), router_tuple=True)
    return MoE(experts, top_k, inter, router="router", router_bias=True, expert_bias=True,
               activation="clamped_swiglu")


def _llama4_kinds(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    """Llama 4's decoder layers as kinds (transformers 5.23 Llama4TextConfig.__post_init__ and
    Llama4TextDecoderLayer): a layer uses RoPE where no_rope_layers[i] is 1 (default: all but
    every no_rope_layer_interval-th, 4), and those attend in chunks (layer_types
    "chunked_attention", the chunk planned as a window: transformers builds an explicit mask
    once the sequence reaches it, as for sliding layers), the others "full_attention"; a layer
    is MoE when in moe_layers (default every interleave_moe_layer_step-th, from step - 1), else
    a dense gated MLP intermediate_size_mlp wide. Kinds are named by attention, and by
    "attention/mlp" where both MLP kinds occur (Maverick)."""
    n = dims.layers
    interval = config.get("no_rope_layer_interval") or 4
    rope = config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    types = config.get("layer_types") or ["chunked_attention" if r else "full_attention" for r in rope]
    step = config.get("interleave_moe_layer_step") or 1
    moe_layers = config.get("moe_layers")
    moe_layers = set(range(step - 1, n, step) if moe_layers is None else moe_layers)
    dense_width = config.get("intermediate_size_mlp")
    if len(moe_layers & set(range(n))) < n and not isinstance(dense_width, int):
        raise LayoutError("config.json lacks the field 'intermediate_size_mlp', which the architecture table needs")
    chunk = config.get("attention_chunk_size", 8192)
    moe_layer = _layer(arch, config, dims)
    dense_layer = _layer(replace(arch, moe=None), config, replace(dims, intermediate=dense_width or 0))
    mixed = 0 < len(moe_layers & set(range(n))) < n
    groups: dict[tuple[str, bool], list[int]] = {}
    for i in range(n):
        groups.setdefault((types[i], i in moe_layers), []).append(i)
    kinds = []
    for (attention, is_moe), indices in groups.items():
        layer = moe_layer if is_moe else dense_layer
        if attention == "chunked_attention":
            traits = replace(layer.traits, rope="complex", qk_l2_norm=bool(config.get("use_qk_norm", True)),
                             sliding_window=chunk if isinstance(chunk, int) and chunk > 0 else None)
        else:
            traits = replace(layer.traits, rope="none", attn_temperature=bool(config.get("attn_temperature_tuning", True)))
        name = f"{attention}/{'moe' if is_moe else 'dense'}" if mixed else attention
        kinds.append(LayerKind(name, replace(layer, traits=traits), tuple(indices)))
    return tuple(kinds)


def _deepseek_moe(config: dict, experts: int, top_k: int, inter: int) -> MoE:
    """DeepSeek-V3's mixture of experts (GLM-4.5's alike; transformers 5.23 DeepseekV3MoE,
    Glm4MoeMoE): an fp32 sigmoid router with group-limited top-k (DeepseekV3TopkRouter), fused
    routed experts whose routing weights stay fp32, and n_shared_experts shared experts as one
    gated MLP of Linear modules (``shared_experts``), n_shared_experts * moe_intermediate_size
    wide, run after the routed ones on the MoE's input. peft's all-linear adapts the router
    (r) and the fused experts (gate_up 2r, down r) and drops every MLP Linear (the dense
    layers' and the shared experts': transformers maps both model types to the "qwen2_moe"
    conversion pattern; tracer)."""
    values = _positive_ints(config, ("n_shared_experts", "n_group", "topk_group"), least={"n_shared_experts": 0})
    if experts % values["n_group"] or values["topk_group"] > values["n_group"]:
        raise LayoutError(f"config fields 'n_group' {values['n_group']} and 'topk_group' {values['topk_group']} must "
                          f"split the {experts} experts into groups and choose among them")
    return MoE(experts, top_k, inter, renormalize=bool(config.get("norm_topk_prob", True)), weights_fp32=True,
               peft_converts=True, shared_intermediate=values["n_shared_experts"] * inter,
               shared_name="shared_experts", routing="sigmoid_group", groups=values["n_group"],
               topk_groups=values["topk_group"], shared_first=False)


# MoE kinds whose model types peft 0.21 converts (see Traits.peft_moe_conversion)
PEFT_CONVERTED = frozenset({"mixtral", "qwen", "olmoe", "deepseek"})


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


# ---------------------------------------------------------------- Gemma 4

GEMMA4_DEFAULTS = {  # Gemma4TextConfig's defaults for the fields a config.json may omit (transformers 5.23)
    "sliding_window": 512, "global_head_dim": 512, "num_kv_shared_layers": 0, "attention_k_eq_v": False,
    "use_double_wide_mlp": False, "hidden_size_per_layer_input": 256, "vocab_size_per_layer_input": 262_144,
    "attention_bias": False, "enable_moe_block": False,
}
GEMMA4_PATTERN = 6  # every 6th layer full when the config has no layer_types (Gemma4TextConfig.__post_init__)
GEMMA4_MOE_FIELDS = ("num_experts", "top_k_experts", "moe_intermediate_size")


def gemma4_field(config: dict, name: str):
    """A Gemma 4 config field, or its Gemma4TextConfig default where the config omits it (an
    explicit null stays None: "hidden_size_per_layer_input": null turns per-layer inputs off)."""
    return config[name] if name in config else GEMMA4_DEFAULTS[name]


def per_layer_input(config: dict) -> tuple[int, int]:
    """Gemma 4's per-layer inputs (PLE): (hidden_size_per_layer_input p, vocab_size_per_layer_input);
    (0, 0) where p is 0 or null (the 26B and 31B configs)."""
    p = gemma4_field(config, "hidden_size_per_layer_input")
    if not p:
        return 0, 0
    vocab = gemma4_field(config, "vocab_size_per_layer_input")
    for name, value in (("hidden_size_per_layer_input", p), ("vocab_size_per_layer_input", vocab)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LayoutError(f"config field {name!r} must be a positive integer, got {value!r}")
    return p, vocab


def _gemma4_types(config: dict, layers: int) -> list[str]:
    """Each layer's attention type: the config's layer_types (as many as num_hidden_layers), else
    every 6th full; the last layer is full either way (transformers forces it)."""
    types = config.get("layer_types")
    if types is None:
        types = ["full_attention" if (i + 1) % GEMMA4_PATTERN == 0 else "sliding_attention" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        count = len(types) if isinstance(types, list) else repr(types)
        raise LayoutError(f"config field 'layer_types' lists {count} layer types, but num_hidden_layers is {layers}: "
                          "they must agree")
    unknown = sorted({str(t) for t in types} - {"sliding_attention", "full_attention"})
    if unknown:
        raise LayoutError(f"config field 'layer_types' has {', '.join(map(repr, unknown))}: Gemma 4 layers are "
                          "sliding_attention or full_attention")
    return list(types[:-1]) + ["full_attention"]


def _gemma4_overrides(config: dict, dims: Dims, types: list[str]) -> dict[int, dict]:
    """Each layer's head_dim and num_key_value_heads: the config's per_layer_config where given
    (keys are layer indices, as transformers writes them), else global_head_dim on the full
    layers and, with attention_k_eq_v, num_global_key_value_heads there
    (Gemma4TextConfig.__post_init__)."""
    given = config.get("per_layer_config")
    if given is None:
        head = gemma4_field(config, "global_head_dim")
        kv = config.get("num_global_key_value_heads") if gemma4_field(config, "attention_k_eq_v") else None
        full = {"head_dim": head} | ({"num_key_value_heads": kv} if kv is not None else {})
        given = {i: full for i, t in enumerate(types) if t == "full_attention"}
    if not isinstance(given, dict):
        raise LayoutError(f"config field 'per_layer_config' must map layer indices to fields, got {given!r}")
    out: dict[int, dict] = {}
    for key, fields in given.items():
        index = int(key) if isinstance(key, int) or str(key).isdigit() else None
        if index is None or not 0 <= index < dims.layers:
            raise LayoutError(f"config field 'per_layer_config' names layer {key!r}, but num_hidden_layers is "
                              f"{dims.layers}: they must agree")
        out[index] = fields if isinstance(fields, dict) else {}
    widths = {}
    for i in range(dims.layers):
        fields = out.get(i, {})
        d = fields.get("head_dim", dims.head_dim)
        kv = fields.get("num_key_value_heads", dims.kv_heads)
        for name, value in (("head_dim", d), ("num_key_value_heads", kv)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LayoutError(f"config field 'per_layer_config' gives layer {i} {name} {value!r}: "
                                  "a positive integer is needed")
        if dims.heads % kv:
            raise LayoutError(f"layer {i}'s num_key_value_heads {kv} must divide num_attention_heads {dims.heads}")
        widths[i] = {"head_dim": d, "kv_heads": kv}
    return widths


def _gemma4_kinds(arch: Architecture, config: dict, dims: Dims) -> tuple[LayerKind, ...]:
    """Gemma 4's decoder layers as kinds: sliding and full attention, and their KV-shared
    counterparts (the last num_kv_shared_layers layers), each with its own widths.

    transformers 5.23 modeling_gemma4: Gemma4TextAttention (q_proj, q_norm; unless KV-shared
    k_proj, k_norm, a weightless v_norm and, unless attention_k_eq_v on a full layer, v_proj;
    o_proj), Gemma4TextMLP (gate, up, down; twice intermediate_size on a KV-shared layer with
    use_double_wide_mlp), Gemma4TextDecoderLayer (the four sandwich norms; with per-layer inputs
    per_layer_input_gate, per_layer_projection and post_per_layer_input_norm)."""
    moe = _gemma4_moe(config) if gemma4_field(config, "enable_moe_block") else None
    types = _gemma4_types(config, dims.layers)
    widths = _gemma4_overrides(config, dims, types)
    shared = gemma4_field(config, "num_kv_shared_layers") or 0
    if not isinstance(shared, int) or not 0 <= shared < dims.layers:
        raise LayoutError(f"config field 'num_kv_shared_layers' must be an integer from 0 to num_hidden_layers - 1 "
                          f"({dims.layers - 1}), got {shared!r}")
    first_shared = dims.layers - shared
    if shared and set(types[first_shared:]) - set(types[:first_shared]):
        raise LayoutError("config field 'num_kv_shared_layers': a KV-shared layer's attention type has no earlier "
                          "layer to read keys and values from (layer_types)")
    window = gemma4_field(config, "sliding_window")
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(types):
        groups.setdefault((SHARED_KV_PREFIX if i >= first_shared else "") + t, []).append(i)
    p, _ = per_layer_input(config)
    kinds = []
    for name in sorted(groups, key=lambda n: groups[n][0]):
        indices = tuple(groups[name])
        sizes = {tuple(widths[i].values()) for i in indices}
        if len(sizes) > 1:
            raise NotPlannedLayout(f"config field 'per_layer_config' gives the {name} layers different head_dim / "
                                   "num_key_value_heads: not planned yet (use probe --device fake)")
        d, kv = sizes.pop()
        is_shared = name.startswith(SHARED_KV_PREFIX)
        inter = dims.intermediate * (2 if is_shared and gemma4_field(config, "use_double_wide_mlp") else 1)
        full = name.endswith("full_attention")
        layer = _gemma4_layer(arch, config, replace(dims, head_dim=d, kv_heads=kv, intermediate=inter), p,
                              shared=is_shared, values=not (full and gemma4_field(config, "attention_k_eq_v")),
                              moe=moe)
        if not full:
            layer = replace(layer, traits=replace(layer.traits, sliding_window=window))
        kinds.append(LayerKind(name, layer, indices, head_dim=d if d != dims.head_dim else None,
                               kv_heads=kv if kv != dims.kv_heads else None,
                               intermediate=inter if inter != dims.intermediate else None))
    return tuple(kinds)


def _gemma4_moe(config: dict) -> MoE:
    """Gemma 4's mixture of experts (enable_moe_block; transformers 5.23 Gemma4TextRouter,
    Gemma4TextExperts, Gemma4TextDecoderLayer): num_experts fused experts moe_intermediate_size
    wide (gate_up_proj (E, 2I, h), down_proj (E, h, I), layers.N.experts), top_k_experts of them
    per token by an fp32 softmax over every expert, the top-k weights renormalized and scaled by
    per_expert_scale (fp32 routing weights); the router module's projection is a plain nn.Linear.
    The layer's dense MLP runs beside them (:attr:`MoE.beside_dense`). peft 0.21 converts no
    target for gemma4 (transformers' conversion_mapping has no MoE pattern for it): all-linear
    adapts the attention, the dense MLP and router.proj, never the experts (tracer)."""
    values = _positive_ints(config, GEMMA4_MOE_FIELDS, needs="enable_moe_block")
    experts, top_k = values["num_experts"], values["top_k_experts"]
    if top_k > experts:
        raise LayoutError(f"config field 'top_k_experts' ({top_k}) exceeds 'num_experts' ({experts})")
    # (activation "swiglu": the gated act(gate) * up, whose saved set gelu_pytorch_tanh shares)
    return MoE(experts, top_k, values["moe_intermediate_size"], router="router", renormalize=True,
               weights_fp32=True, router_linear=True, beside_dense=True, prefix="")


def _gemma4_layer(arch: Architecture, config: dict, dims: Dims, p: int, shared: bool, values: bool,
                  moe: MoE | None = None) -> Layer:
    """One Gemma 4 layer of the given widths (see :func:`_gemma4_kinds`); with experts (``moe``)
    also the router's Linear after the dense MLP's, the router's weightless norm and the three
    norms of the MoE block (pre_feedforward_layernorm_2 before the experts,
    post_feedforward_layernorm_1 / _2 on the dense MLP's and the experts' outputs)."""
    h, inter, d = dims.hidden, dims.intermediate, dims.head_dim
    bias = bool(gemma4_field(config, "attention_bias"))
    attention = (Linear("q_proj", h, dims.q_dim, bias, "q"),)
    norms = tuple(Norm(name, site, h) for name, site in arch.norm_sites) + (Norm("q_norm", "q", d, per_head=True),)
    if not shared:
        attention += (Linear("k_proj", h, dims.kv_dim, bias, "k"),)
        attention += (Linear("v_proj", h, dims.kv_dim, bias, "v"),) if values else ()
        norms += (Norm("k_norm", "k", d, per_head=True), Norm("v_norm", "v", d, per_head=True, scale=False))
    linears = attention + (Linear("o_proj", dims.q_dim, h, bias, "o"), Linear("gate_proj", h, inter, False, "gate"),
                           Linear("up_proj", h, inter, False, "up"), Linear("down_proj", inter, h, False, "down"))
    if moe is not None:
        linears += (Linear(f"{moe.router}.proj", h, moe.experts, False, "router"),)
        norms += (Norm(f"{moe.router}.norm", "moe_in", h, scale=False), Norm("pre_feedforward_layernorm_2", "moe_in", h),
                  Norm("post_feedforward_layernorm_1", "mlp_out", h), Norm("post_feedforward_layernorm_2", "mlp_out", h))
    if p:
        linears += (Linear("per_layer_input_gate", h, p, False, "ple_gate"),
                    Linear("per_layer_projection", p, h, False, "ple_proj"))
        norms += (Norm("post_per_layer_input_norm", "ple_out", h),)
    changes = {"kv_shared": shared}
    if config.get("final_logit_softcapping"):
        changes["logit_softcapping"] = True
    return Layer(linears=linears, norms=norms, traits=replace(arch.traits, **changes), moe=moe)
