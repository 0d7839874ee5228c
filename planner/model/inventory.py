"""The tensor inventory: every parameter tensor one training step holds, in one list.

For a model and a training spec, each :class:`Tensor` names a parameter as transformers and
peft name it (``layers.*.q_proj.lora_A.weight``; ``*`` is the layer index), with its
shape, the layer kind (planner.model.architectures.LayerKind) and how many layers of it hold it, its role in the model, and what the method
does to it (its *treatment*):

============  ==========================================================================
frozen        a base parameter that gets no gradient (adapter methods)
trainable     a base parameter trained whole (full fine-tuning)
4bit          a decoder Linear weight packed to 4 bits, with its quant state (QLoRA, QDoRA)
adapter       LoRA's A and B, DoRA's magnitude, LoRA on a fused parameter (peft)
saved_copy    peft's modules_to_save copy of embed_tokens / lm_head, trained whole
============  ==========================================================================

A trained tensor whose module runs under ``torch.no_grad`` (DeepSeek-V3.2's sparse-attention
indexer: its Linears, k_norm, and the adapters peft's all-linear puts on them) requires grad but
gets no gradient (``grad`` False): it counts among the trainable parameters peft reports and
DDP's buckets, but has no gradient and no optimizer state (torch's optimizers skip a parameter
whose grad is None). Tracer, tiny DeepSeek-V3.2 after a real CPU step: grad None on every
indexer tensor, LoRA and full fine-tuning alike.

Every count of tensors sums this list: total and trainable parameters, the weights,
adapters and gradients, each optimizer's states (bitsandbytes' 8-bit AdamW treats small
tensors apart, so it needs the tensors, not a total), every sharded term (FSDP chunks each
tensor's first dimension) and the time model's weight-gradient and optimizer work. A rule
about which tensors a method trains is written here once.

Shapes follow transformers 5.23 and peft 0.21: a Linear's weight is (out, in); LoRA's A is
(r, in) and B (out, r); DoRA's magnitude (out,); a fused expert weight is (E, 2I, h) for
gate_up and (E, h, I) for down, and LoRA on it (peft's ParamWrapper) is A (r*E, in), B
(out, r*E).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

from planner.memory.variants import variant
from planner.model.architectures import ATTENTION_ROLES, INDEXER_ROLES, INDEXER_SITES, UNQUANTIZED_ROLES, Mamba2, ShortConv
from planner.model import targets
from planner.model.specs import ModelSpec, TrainSpec
from planner.units import FP32, ceil_div

TREATMENTS = ("frozen", "trainable", "4bit", "adapter", "saved_copy")
TRAINED = frozenset({"trainable", "adapter", "saved_copy"})
ROOT = "root"  # the kind of the tensors outside the decoder layers (embedding, final norm, lm_head)


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor (or one per layer: ``layers`` copies of it)."""

    path: str
    shape: tuple[int, ...]
    role: str  # embedding, lm_head, final_norm, norm, linear, kept_linear (a Linear weight 4-bit
    #            quantization leaves alone: architectures.UNQUANTIZED_ROLES), bias, router, router_bias, experts,
    #            expert_bias, sinks, activation, conv (a DeltaNet's or Mamba-2's conv1d), ssm,
    #            delta_param (a DeltaNet's A_log, dt_bias), lora_A, lora_B, magnitude
    kind: str = "decoder"  # the layer kind that holds it, or ROOT
    layers: int = 1  # how many layers hold one (1 for the root's)
    treatment: str = "frozen"
    dtype_bytes: int = 2  # bytes per element as stored (a 4-bit weight: see :attr:`stored_bytes`)
    grad: bool = True  # False: autograd never reaches it (its module runs under torch.no_grad)

    @property
    def numel(self) -> int:
        """Elements of one copy."""
        return prod(self.shape)

    @property
    def rows(self) -> int:
        """Its first dimension, which FSDP2 chunks over the ranks."""
        return self.shape[0]

    @property
    def elements(self) -> int:
        """Elements of every copy (``layers`` x :attr:`numel`)."""
        return self.layers * self.numel

    @property
    def trained(self) -> bool:
        """Whether it gets a gradient and optimizer state."""
        return self.treatment in TRAINED and self.grad

    @property
    def requires_grad(self) -> bool:
        """Whether it is trainable (peft's count), gradient or not."""
        return self.treatment in TRAINED

    @property
    def stored_bytes(self) -> int:
        """Bytes of every copy as stored: two 4-bit codes per byte, ceil(numel / 2) each
        (bitsandbytes' packed storage), else numel x dtype bytes."""
        if self.treatment == "4bit":
            return self.layers * ceil_div(self.numel, 2)
        return self.elements * self.dtype_bytes


# ---------------------------------------------------------------- the base model

@lru_cache(maxsize=256)
def base_tensors(model: ModelSpec) -> tuple[Tensor, ...]:
    """The base model's parameters, as transformers builds them (treatment and dtype unset):
    the embedding, per decoder layer its norms, Linear weights and biases, the mixture of
    experts' router and fused experts, the attention sinks; the final norm and an untied lm_head."""
    h = model.hidden_size
    out = [Tensor("embed_tokens.weight", (model.vocab_size, h), "embedding", ROOT)]
    for kind in model.kinds:
        out += _layer_tensors(model, kind.layer, kind.name, kind.count)
    out += _per_layer_input_tensors(model)
    out.append(Tensor("norm.weight", (h,), "final_norm", ROOT))
    if model.traits.norm == "layer":  # nn.LayerNorm's bias (StarCoder2)
        out.append(Tensor("norm.bias", (h,), "final_norm", ROOT))
    if not model.tie_word_embeddings:
        out.append(Tensor("lm_head.weight", (model.vocab_size, h), "lm_head", ROOT))
        if model.lm_head_bias:
            out.append(Tensor("lm_head.bias", (model.vocab_size,), "lm_head", ROOT))
    return tuple(out)


def _layer_tensors(model: ModelSpec, layer, kind: str, n: int) -> list[Tensor]:
    """The parameters of the ``n`` layers of one kind."""
    h = model.hidden_size

    def tensor(path, shape, role, grad=True):
        return Tensor(f"layers.*.{path}", shape, role, kind, n, grad=grad)

    out = []
    for norm in layer.norms:
        if not norm.scale:  # a weightless norm (Gemma 4's v_norm)
            continue
        grad = norm.site not in INDEXER_SITES
        out.append(tensor(f"{norm.name}.weight", norm.shape, "norm", grad))
        if norm.bias:
            out.append(tensor(f"{norm.name}.bias", norm.shape, "norm", grad))
    for lin in layer.linears:
        grad = lin.role not in INDEXER_ROLES
        role = "kept_linear" if lin.role in UNQUANTIZED_ROLES else "linear"
        out.append(tensor(f"{lin.name}.weight", (lin.out_features, lin.in_features), role, grad))
        if lin.bias:
            out.append(tensor(f"{lin.name}.bias", (lin.out_features,), "bias", grad))
    moe = layer.moe
    if moe is not None:
        e, i = moe.experts, moe.intermediate
        if moe.router_linear:  # Gemma 4: the projection is a Linear (above); the module's scales
            out += [tensor(f"{moe.router}.scale", (h,), "router"), tensor(f"{moe.router}.per_expert_scale", (e,), "router")]
        else:
            out.append(tensor(f"mlp.{moe.router}.weight", (e, h), "router"))
        if moe.router_bias:
            out.append(tensor(f"mlp.{moe.router}.bias", (e,), "router_bias"))
        out += [tensor(f"{moe.prefix}experts.gate_up_proj", (e, 2 * i, h), "experts"),
                tensor(f"{moe.prefix}experts.down_proj", (e, h, i), "experts")]
        if moe.expert_bias:
            out += [tensor(f"{moe.prefix}experts.gate_up_proj_bias", (e, 2 * i), "expert_bias"),
                    tensor(f"{moe.prefix}experts.down_proj_bias", (e, h), "expert_bias")]
    if layer.traits.activation == "xielu":  # transformers' XIELUActivation: alpha_p, alpha_n of shape (1,)
        out += [tensor("mlp.act_fn.alpha_p", (1,), "activation"), tensor("mlp.act_fn.alpha_n", (1,), "activation")]
    if layer.traits.attention_sinks:
        out.append(tensor("self_attn.sinks", (model.num_heads,), "sinks"))
    out += [tensor(path, shape, role) for path, shape, role in mixer_parameters(layer.mixer)]
    net = layer.deltanet
    if net is not None:
        # the Gated DeltaNet's depthwise conv1d (no bias), its per-value-head decay parameters and
        # its gated RMSNorm over one value head (modeling_qwen3_5.Qwen3_5GatedDeltaNet.__init__)
        out += [tensor("linear_attn.conv1d.weight", (net.conv_dim, 1, net.conv_kernel), "conv"),
                tensor("linear_attn.dt_bias", (net.value_heads,), "delta_param"),
                tensor("linear_attn.A_log", (net.value_heads,), "delta_param"),
                tensor("linear_attn.norm.weight", (net.value_dim,), "norm")]
    return out


def root_linears(model: ModelSpec) -> tuple:
    """The Linear modules outside the decoder layers that peft's all-linear adapts (lm_head never
    is): Gemma 4's per_layer_model_projection, h -> L*p (transformers 5.23
    Gemma4TextModel.project_per_layer_inputs; tracer: all-linear puts LoRA on it)."""
    from planner.model.architectures import Linear

    if not model.per_layer_input:
        return ()
    return (Linear("per_layer_model_projection", model.hidden_size, model.num_layers * model.per_layer_input,
                   False, "ple_model"),)


def _per_layer_input_tensors(model: ModelSpec) -> list[Tensor]:
    """Gemma 4's per-layer inputs outside the layers: the embedding (per_layer_vocab x L*p), the
    projection of the embedding output (a Linear, L*p x h) and the norm over p after it."""
    if not model.per_layer_input:
        return []
    p, wide = model.per_layer_input, model.num_layers * model.per_layer_input
    return [Tensor("embed_tokens_per_layer.weight", (model.per_layer_vocab, wide), "ple_embedding", ROOT),
            *(Tensor(f"{lin.name}.weight", (lin.out_features, lin.in_features), "linear", ROOT)
              for lin in root_linears(model)),
            Tensor("per_layer_projection_norm.weight", (p,), "norm", ROOT)]


def mixer_parameters(mixer) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """The parameters of a non-attention mixer that are not Linear weights, as (path, shape,
    role): Mamba-2's depthwise conv1d (conv_dim, 1, K) and its bias, dt_bias, A_log and D (one
    per head, role "ssm") and the gated RMSNorm's weight (d_inner, role "norm"); a short
    convolution's depthwise conv (h, 1, K) and bias (transformers 5.23
    GraniteMoeHybridMambaLayer / NemotronHMamba2Mixer.__init__, Lfm2ShortConv.__init__)."""
    if isinstance(mixer, Mamba2):
        out = [("mamba.conv1d.weight", (mixer.conv_dim, 1, mixer.conv_kernel), "conv")]
        if mixer.conv_bias:
            out.append(("mamba.conv1d.bias", (mixer.conv_dim,), "conv"))
        out += [(f"mamba.{name}", (mixer.heads,), "ssm") for name in ("dt_bias", "A_log", "D")]
        return tuple(out) + (("mamba.norm.weight", (mixer.inner,), "norm"),)
    if isinstance(mixer, ShortConv):
        out = [("conv.conv.weight", (mixer.width, 1, mixer.kernel), "conv")]
        if mixer.bias:
            out.append(("conv.conv.bias", (mixer.width,), "conv"))
        return tuple(out)
    return ()


# ---------------------------------------------------------------- what a method does to them

def _adapters(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> list[Tensor]:
    """peft's trainable tensors for ``train``: LoRA A and B (and DoRA's magnitude) on each
    targeted Linear, LoRA on each targeted fused parameter, each modules_to_save copy."""
    r = train.rank
    adapter = variant(train).adapter
    out = []
    targets.targeted_parameters(model, train)  # refuses target_parameters on a model without experts
    for view in model.by_kind():
        kind, n = view.kinds[0].name, view.num_layers

        def tensor(path, shape, role, kind=kind, n=n, grad=True):
            return Tensor(f"layers.*.{path}", shape, role, kind, n, "adapter", FP32, grad)

        for lin in targets.targeted_linears(view, train.target_modules):
            out += [tensor(f"{lin.name}.{name}", shape, role, grad=lin.role not in INDEXER_ROLES)
                    for name, shape, role in adapter.tensors(lin, r)]
        for tg in targets.targeted_parameters(view, train) if view.moe is not None else ():
            out += [tensor(f"{view.moe.prefix}{tg.name}.lora_A", (tg.rank * tg.experts, tg.in_features), "lora_A"),
                    tensor(f"{view.moe.prefix}{tg.name}.lora_B", (tg.out_features, tg.rank * tg.experts), "lora_B")]
    for lin in targets.targeted_root_linears(model, train.target_modules):
        out += [Tensor(f"{lin.name}.{name}", shape, role, ROOT, 1, "adapter", FP32)
                for name, shape, role in adapter.tensors(lin, r)]
    for module in train.modules_to_save:
        out.append(Tensor(f"{module}.modules_to_save.weight", (model.vocab_size, model.hidden_size),
                          "embedding" if module == "embed_tokens" else "lm_head", ROOT, treatment="saved_copy",
                          dtype_bytes=variant(train).base.parameter_bytes(weight_bytes)))
    return out


def inventory(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> tuple[Tensor, ...]:
    """Every parameter tensor of ``train``'s step, with its treatment and stored dtype
    (``weight_bytes``: the base model's stored dtype; fp32 master weights under `mixed`).

    Full fine-tuning trains every base tensor. The adapter methods freeze the base and add
    peft's tensors (fp32: peft's autocast_adapter_dtype); QLoRA / QDoRA pack each decoder
    Linear weight to 4 bits, and every other base parameter is fp32 because
    prepare_model_for_kbit_training casts all 16-bit parameters that are not Params4bit (the
    fused experts included: bitsandbytes swaps nn.Linear modules only). A modules_to_save
    copy takes the dtype of the module it copies: the weight dtype, fp32 under QLoRA.
    """
    return _inventory(model, _what_trains(train), weight_bytes)


def _what_trains(train: TrainSpec) -> TrainSpec:
    """The settings the inventory depends on (the method and what its adapter targets), as a
    TrainSpec with every other setting at its default: plans that differ only in batch,
    sequence, checkpointing or sharding share one inventory."""
    key = (train.method, train.rank, train.target_modules, train.target_parameters, train.modules_to_save)
    return _settings(*key)


@lru_cache(maxsize=4096)
def _settings(method, rank, target_modules, target_parameters, modules_to_save) -> TrainSpec:
    return TrainSpec(method=method, rank=rank, target_modules=target_modules, target_parameters=target_parameters,
                     modules_to_save=modules_to_save)


@lru_cache(maxsize=1024)
def _inventory(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> tuple[Tensor, ...]:
    base = base_tensors(model)
    method = variant(train)
    if method.adapter.trains_base:
        return tuple(_treat(t, "trainable", weight_bytes) for t in base)
    if method.base.quantized:
        out = [_treat(t, "4bit", 0) if t.role == "linear"
               else _treat(t, "frozen", method.base.parameter_bytes(weight_bytes)) for t in base]
    else:
        out = [_treat(t, "frozen", weight_bytes) for t in base]
    out += _adapters(model, train, weight_bytes)
    return tuple(out)


def _treat(t: Tensor, treatment: str, dtype_bytes: int) -> Tensor:
    return Tensor(t.path, t.shape, t.role, t.kind, t.layers, treatment, dtype_bytes, t.grad)


# ---------------------------------------------------------------- sums over it

@dataclass(frozen=True)
class Sums:
    """The inventory's totals by treatment, computed once per model and settings."""

    elements: dict  # treatment -> elements
    stored_bytes: dict  # treatment -> stored bytes
    trained_elements: int  # of every trainable tensor (peft's count), gradient or not
    trained_bytes: int  # of the tensors that get a gradient (:attr:`Tensor.trained`)


def sums(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> Sums:
    """:func:`inventory`'s totals by treatment (every treatment a key, zeros included)."""
    return _sums(model, _what_trains(train), weight_bytes)


@lru_cache(maxsize=4096)
def _sums(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> Sums:
    tensors = _inventory(model, train, weight_bytes)
    elements_by = dict.fromkeys(TREATMENTS, 0)
    bytes_by = dict.fromkeys(TREATMENTS, 0)
    for t in tensors:
        elements_by[t.treatment] += t.elements
        bytes_by[t.treatment] += t.stored_bytes
    return Sums(elements_by, bytes_by, sum(elements_by[k] for k in TRAINED),
                sum(t.stored_bytes for t in tensors if t.trained))


def elements(tensors, treatments=TREATMENTS) -> int:
    """Elements of the tensors with one of ``treatments``."""
    return sum(t.elements for t in tensors if t.treatment in treatments)


def stored_bytes(tensors, treatments=TREATMENTS) -> int:
    """Stored bytes of the tensors with one of ``treatments``."""
    return sum(t.stored_bytes for t in tensors if t.treatment in treatments)


def trained(tensors) -> tuple[Tensor, ...]:
    """The tensors that get a gradient and optimizer state."""
    return tuple(t for t in tensors if t.trained)


def of_kind(tensors, kind: str) -> tuple[Tensor, ...]:
    """One copy of each tensor of a layer kind (``ROOT``: the tensors outside the layers)."""
    return tuple(_one(t) for t in tensors if t.kind == kind)


ATTENTION_SITES = frozenset({"attn_in", "q", "k", "v", "q_a", "kv_a"})


def attention_block(layer, tensors) -> tuple[Tensor, ...]:
    """The tensors of ``layer``'s attention block, by role: the Linears of an attention role
    (architectures.ATTENTION_ROLES), the norms at the attention's sites (its input norm, the
    q/k/v and latent norms) and attention sinks; a layer's backward makes their gradients
    after those of its MLP or experts (everything else of the layer)."""
    modules = ({lin.name for lin in layer.linears if lin.role in ATTENTION_ROLES}
               | {n.name for n in layer.norms if n.site in ATTENTION_SITES})
    return tuple(t for t in tensors if t.role == "sinks" or t.path.removeprefix("layers.*.").rsplit(".", 1)[0] in modules)


def one_layer(tensors) -> tuple[Tensor, ...]:
    """One layer's tensors: one copy of each tensor of the largest layer kind (the layer an
    FSDP unit all-gathers: a hybrid's largest, a bound for its other kinds)."""
    sizes: dict[str, int] = {}
    for t in tensors:
        if t.kind != ROOT:
            sizes[t.kind] = sizes.get(t.kind, 0) + t.numel
    return of_kind(tensors, max(sizes, key=sizes.get)) if sizes else ()


def _one(t: Tensor) -> Tensor:
    return t if t.layers == 1 else Tensor(t.path, t.shape, t.role, t.kind, 1, t.treatment, t.dtype_bytes, t.grad)
