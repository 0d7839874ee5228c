"""One function per memory component: integer bytes, a formula and its source each.

Every function is pure arithmetic over the specs. How the components combine into the
phases of a training step (and so into the peak) is in :mod:`planner.memory.moments`.

Notation in the docstrings: T = batch * seq tokens, h = hidden size, I = intermediate
size, V = vocabulary, L = decoder layers, c = bytes of the compute dtype (2 for bf16/fp16),
r = LoRA rank, n = number of elements of a weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from planner.model import counts
from planner.model import targets
from planner.model import inventory as inv
from planner.model.architectures import (ATTENTION_INPUT_ROLES, ATTENTION_ROLES, DELTA_INPUT_ROLES, K_SIDE, LATENT_ROLES,
                                         MIXER_INPUT_ROLES, MLP_INPUT_ROLES, NORM_READER_ROLES, Q_SIDE, ROUTER_ROLES, V_SIDE,
                                         SHARED_ROLES, Linear, Norm)
from planner.model.specs import DTYPE_BYTES, ModelSpec, TrainSpec
from planner.memory.variants import variant
from planner.units import FP32, ceil_div

NF4_BLOCK = 64  # bitsandbytes blocksize for 4-bit weights (bnb_4bit default)
DQ_BLOCK = 256  # blocksize of the second (double) quantization of the absmax values
NF4_CODE_BYTES = 16 * FP32  # the 16-entry fp32 code table each 4-bit QuantState holds
DQ_CODE_BYTES = 256 * FP32  # the 256-entry fp32 8-bit code table each nested (double-quant) state holds
BNB8_BLOCK = 256  # bitsandbytes 8-bit optimizers quantize their states blockwise, 256 per block
BNB8_MIN_SIZE = 4096  # bitsandbytes keeps 32-bit states for tensors smaller than this (min_8bit_size)


@dataclass(frozen=True)
class Precision:
    """Resolved byte sizes of one plan: compute dtype, stored weights, trainable params."""

    compute: int  # activations and matmuls (bf16/fp16: 2, fp32: 4)
    weight: int  # stored base weights (fp32 master weights under `mixed`)
    autocast: bool  # the forward runs under torch.autocast
    hidden: int  # Linear outputs and the MLP between the matmuls
    stream: int  # the residual stream between the layers (embedding and norm outputs)

    @property
    def attention(self) -> int:
        """Bytes per element of attention's q, k, v and output: the compute dtype under autocast
        (which casts the projections' outputs), else the dtype the projections return, the
        hidden stream's: fp32 for QLoRA / QDoRA without autocast, whose 4-bit Linears return
        their fp32 input's dtype (tracer, SmolLM3-3B 2 layers, QLoRA pure bf16: fp32 rotated q
        and k, v and SDPA output, twice the c-byte plan)."""
        return self.compute if self.autocast else self.hidden

    @property
    def eager_probabilities(self) -> int:
        """Bytes eager attention keeps per score for the probabilities: softmax's fp32 output and
        its cast to the attention dtype a (:attr:`attention`) that multiplies v, 4 + a; the cast
        is the same tensor when a is fp32 (``Tensor.to`` returns self), 4."""
        return FP32 + (self.attention if self.attention != FP32 else 0)


def precision(train: TrainSpec, dtype: str) -> Precision:
    """Byte sizes for a resolved dtype ("bf16", "fp16" or "fp32") and the precision scheme.

    Compute dtype, stored weights (fp32 master weights under `mixed`) and autocast come from
    the one precision rule, :func:`planner.model.precision.scheme`; bytes from DTYPE_BYTES.
    The hidden stream is fp32 for QLoRA / QDoRA: prepare_model_for_kbit_training casts the
    norm weights to fp32, so each norm's output (fp32 weight * input) is fp32, and
    bitsandbytes' Linear4bit casts its output back to its input's dtype: every Linear4bit
    fed by a norm, and the MLP between them, produces fp32 tensors (seen in the tracer:
    Llama-2-7B's gate/up/act outputs take twice LoRA's bytes).
    The residual stream is fp32 for them and under `mixed` precision too: the embedding and
    norm weights are fp32, so the embedding output, every norm output and every residual sum
    is fp32, while an nn.Linear under autocast still returns the compute dtype (tracer,
    full fine-tuning in mixed precision: fp32 residual sums and norm outputs, bf16 q/k/v and
    MLP outputs).
    """
    from planner.model.precision import scheme

    s = scheme(train, dtype)
    compute, weight = DTYPE_BYTES[s.compute], DTYPE_BYTES[s.weights]
    hidden = variant(train).base.hidden_bytes(compute)
    return Precision(compute=compute, weight=weight, autocast=s.autocast,
                     hidden=hidden, stream=FP32 if train.precision == "mixed" else hidden)


# ---------------------------------------------------------------- weights

def quantized_weight_bytes(n: int) -> int:
    """4-bit packed storage of one weight: two codes per byte, ceil(n / 2) bytes (bitsandbytes)."""
    return ceil_div(n, 2)


def weights_base(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Base model weights.

    16-bit methods: total_params * weight bytes. QLoRA / QDoRA: decoder Linear weights packed
    to 4 bits (ceil(n/2) bytes each) and every other parameter (embeddings, norms, lm_head,
    biases) in fp32, because peft's prepare_model_for_kbit_training casts all fp16/bf16
    parameters that are not Params4bit to fp32.
    """
    stored = inv.sums(model, train, prec.weight).stored_bytes
    return stored["frozen"] + stored["trainable"] + stored["4bit"]


@lru_cache(maxsize=256)
def packed_layer_bytes(model: ModelSpec) -> int:
    """One decoder layer's Linear weights packed to 4 bits (:func:`quantized_weight_bytes` each):
    the largest kind's (:func:`planner.model.inventory.one_layer`), not every kind's summed."""
    return sum(quantized_weight_bytes(t.numel) for t in inv.one_layer(inv.base_tensors(model)) if t.role == "linear")


def quant_state_per_weight(n: int, double_quant: bool) -> int:
    """bitsandbytes 4-bit quant state of one weight of n elements (blocks of 64).

    Without double quantization: one fp32 absmax per block, 4 * ceil(n/64) bytes (0.5 bit/param).
    With it (Dettmers et al. 2023, QLoRA section 3): the absmax values are themselves
    quantized to uint8 in blocks of 256, ceil(n/64) bytes, plus one fp32 absmax per 256
    blocks and one fp32 offset (about 0.127 bit/param), and the nested state keeps its own
    copy of the 256-entry fp32 8-bit code table (1024 bytes per weight: measured on
    bitsandbytes' QuantState.state2.code by validate's storage invariant). Either way the
    state keeps the 16-entry fp32 code table of the 4-bit data type.
    """
    blocks = ceil_div(n, NF4_BLOCK)
    if not double_quant:
        return blocks * absmax_bytes(double_quant) + NF4_CODE_BYTES
    return (blocks * absmax_bytes(double_quant) + ceil_div(blocks, DQ_BLOCK) * FP32 + FP32 + DQ_CODE_BYTES
            + NF4_CODE_BYTES)


def absmax_bytes(double_quant: bool) -> int:
    """Bytes of one 64-weight block's absmax: fp32, or uint8 once double-quantized."""
    return 1 if double_quant else FP32


def weights_quant_state(model: ModelSpec, train: TrainSpec) -> int:
    """Quant states of every 4-bit decoder Linear (0 for unquantized methods)."""
    return _quant_states(model, train.is_quantized, train.double_quant)


@lru_cache(maxsize=1024)
def _quant_states(model: ModelSpec, quantized: bool, double_quant: bool) -> int:
    if not quantized:
        return 0
    return sum(t.layers * quant_state_per_weight(t.numel, double_quant)
               for t in inv.base_tensors(model) if t.role == "linear")


# ---------------------------------------------------------------- trainable state

def adapter_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """LoRA A, B (and DoRA magnitude) in fp32: 4 bytes per adapter parameter.

    peft keeps adapter weights in fp32 on a 16-bit base (LoraConfig / get_peft_model
    autocast_adapter_dtype=True, the default).
    """
    return inv.sums(model, train, FP32).stored_bytes["adapter"]


def saved_module_bytes(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """peft's modules_to_save copies (embed_tokens, lm_head: V*h each), in the dtype of the
    module they copy: the weight dtype, or fp32 for QLoRA / QDoRA, whose embedding and lm_head
    prepare_model_for_kbit_training has cast to fp32 before peft copies them (tracer, tiny
    Llama: one V x h bf16 tensor more for LoRA, fp32 for QLoRA). The original stays, frozen,
    in weights/base."""
    return inv.sums(model, train, prec.weight).stored_bytes["saved_copy"]


def parameter_bytes(train: TrainSpec, prec: Precision) -> int:
    """Bytes of a base parameter that is not a packed 4-bit weight (the embedding and lm_head,
    and the copies modules_to_save trains; a mixture of experts' fused experts): the stored
    weight dtype, or what the base treatment casts it to (fp32 under QLoRA / QDoRA,
    planner.memory.variants)."""
    return variant(train).base.parameter_bytes(prec.weight)


def trainable_bytes_per_param(train: TrainSpec, prec: Precision) -> int:
    """Bytes of one adapter or fully fine-tuned parameter: the adapter kind's (fp32 for peft's
    adapters; the stored weight dtype for full fine-tuning; modules_to_save copies:
    :func:`parameter_bytes`)."""
    return variant(train).adapter.trained_bytes(prec.weight)


def trainable_bytes(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Bytes of all trainable parameters, each in its own dtype: full fine-tuning's in the
    stored weight dtype; adapters in fp32 (peft's autocast_adapter_dtype); modules_to_save
    copies as :func:`saved_module_bytes`."""
    return inv.sums(model, train, prec.weight).trained_bytes


def grads(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gradients of the trainable parameters, each in its parameter's dtype: :func:`trainable_bytes`."""
    return trainable_bytes(model, train, prec)


def embedding_grad_pending(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The trained input embedding's gradient, made last in backward (the embedding is the
    first op of the forward): V*h in its dtype, not yet there while the first decoder layer's
    backward runs; 0 when nothing trains the embedding, or when full fine-tuning ties it to
    lm_head, whose backward made the shared gradient long before (tracer, Llama-3.1-8B 4
    layers, full fine-tuning with eager attention at seq 4096: the first layer's softmax
    backward, the backward peak, has every gradient but the embedding's)."""
    if not targets.trains_embedding(train) or (train.method == "full" and model.tie_word_embeddings):
        return 0
    return counts.embedding_params(model) * parameter_bytes(train, prec)


def optimizer_states(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Optimizer state held on the GPU for the whole step.

    AdamW (torch, fused or not; paged 32-bit): exp_avg and exp_avg_sq, each like the
    parameter: 2 * trainable * bytes. bitsandbytes 8-bit AdamW: two uint8 states plus one fp32
    absmax per 256-element block each, for tensors of at least 4096 elements; smaller tensors
    keep 32-bit states (Dettmers et al. 2022, 8-bit Optimizers). Paged variants allocate the
    same bytes in CUDA unified memory: the driver can evict them to host RAM under pressure,
    and torch's allocator does not count them, so they are reported apart
    (:func:`optimizer_states_paged`) and not here. SGD without momentum keeps no state.
    """
    if train.optim == "sgd" or train.optim.startswith("paged_"):
        return 0
    if train.optim == "adamw_8bit":
        return _adamw_8bit_bytes(model, train)
    return 2 * trainable_bytes(model, train, prec)


def _adamw_8bit_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """bitsandbytes 8-bit AdamW's two states over every trained tensor of the inventory: uint8
    with one fp32 absmax per 256-element block for a tensor of at least 4096 elements, fp32 for
    a smaller one (bitsandbytes' min_8bit_size)."""
    total = 0
    for t in inv.trained(inv.inventory(model, train, FP32)):
        if t.numel >= BNB8_MIN_SIZE:
            total += t.layers * 2 * (t.numel + ceil_div(t.numel, BNB8_BLOCK) * FP32)
        else:
            total += t.layers * 2 * t.numel * FP32
    return total


def optimizer_states_paged(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Paged AdamW states in CUDA unified memory (see :func:`optimizer_states`)."""
    if train.optim == "paged_adamw_32bit":
        return 2 * counts.trainable_params(model, train) * FP32
    if train.optim == "paged_adamw_8bit":
        return _adamw_8bit_bytes(model, train)
    return 0


def optimizer_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Temporaries of optimizer.step().

    torch AdamW's foreach path (the CUDA default, `adamw_torch`) computes
    sqrt(exp_avg_sq) for all parameters of a dtype group at once with _foreach_sqrt:
    one parameter-sized list, trainable * bytes. torch groups the parameters by dtype and
    frees one group's list only once the next group's exists, so with two groups (fp32
    adapters and 16-bit modules_to_save copies) both lists are live: the sum (tracer, tiny
    Llama LoRA with lm_head saved: 5 V x h bf16 tensors above the plain optimizer step:
    copy, gradient, two states and this list). The fused kernel
    (`adamw_torch_fused`), bitsandbytes' optimizers and plain SGD update in place: 0.
    """
    if train.optim == "adamw_torch":
        return trainable_bytes(model, train, prec)
    return 0


# ---------------------------------------------------------------- activations

def norm_saved(model: ModelSpec, train: TrainSpec, prec: Precision, norm: Norm | None = None) -> int:
    """What one RMSNorm keeps for backward, when a gradient flows through it (``norm``: a
    layer's norm; None: one over the hidden size, as the final norm).

    transformers' RMSNorm upcasts its input (x.to(float32): rows*width*4, saved by pow and mul)
    and saves rsqrt(mean(x^2) + eps) (rows*4), for rows = T tokens of width h (a hidden norm,
    or OLMo-2's qk-norm over the whole q / k projection) or T*heads rows of head_dim (a
    per-head qk-norm: Qwen3, Gemma-3). When the norm weight itself is trainable (full
    fine-tuning), the mul also saves the normalized input cast back to the input's dtype
    (rows*width*c; the residual stream's for a hidden norm, fp32 under `mixed`; the Linear
    output's for a qk-norm); a norm whose weight multiplies in fp32 (Gemma's
    x_norm * (1 + w.float()), OLMo-2's) saves it as fp32 (rows*width*4). Tracer, tiny models
    (h 128, 4 heads of 24, 2 kv heads): Qwen3 LoRA keeps 4Tq + 4T*heads + 4Tkv + 4T*kv_heads
    more than Llama per layer, OLMo-2 4Tq + 4Tkv + 8T.
    """
    t = train.tokens
    if norm is not None and norm.site in ("q_a", "kv_a"):  # MLA's latent norms: over the latent, per token
        rows, width, kept = t, norm.size, prec.hidden
        if norm.site == "kv_a" and prec.hidden == FP32:
            # the kv latent is a slice of the kv_a output: in fp32, x.to(float32) is that slice, which
            # keeps the whole output, the shared rope key with it (tracer, tiny DeepSeek-V3 QLoRA)
            return rows * (width + model.layer.mla.rope) * FP32 + rows * FP32 + (
                rows * width * kept if train.method == "full" else 0)
    elif norm is None or norm.site not in ("q", "k", "v"):
        rows, width, kept = t, model.hidden_size, prec.stream
    else:
        heads = model.num_heads if norm.site == "q" else model.num_kv_heads
        rows, width, kept = (t * heads if norm.per_head else t), norm.size, prec.hidden
    # Gemma 4's x * pow(mean(x^2) + eps, -0.5) keeps mean + eps and its power (tracer, tiny Gemma 4:
    # a [2, 48, 1] fp32 pow and add output per hidden norm)
    saved = rows * width * FP32 + rows * FP32 * (2 if model.traits.pow_norm else 1)
    if norm is not None and norm.site == "v" and not model.layer.by_role("v") and prec.hidden == FP32:
        # no v_proj (Gemma 4's attention_k_eq_v): v_norm reads k_proj's output, which in fp32 both
        # norms keep as their upcast (x.float() returns it): one tensor (tracer, Gemma 4 31B 2
        # layers, QLoRA bs4x2048: the plan 0.14% over without this)
        saved -= rows * width * FP32
    if model.traits.norm == "layer" and norm is None or (norm is not None and norm.bias):
        # nn.LayerNorm (native_layer_norm) keeps its input, under CUDA autocast its fp32 cast
        # (without autocast the input itself, in the stream's dtype), and fp32 mean and rstd
        # per row; its weight's gradient needs nothing more (tracer, StarCoder2-3B 2 layers)
        return rows * width * (FP32 if prec.autocast else prec.stream) + 2 * rows * FP32
    if model.traits.norm == "centered":
        return centered_norm_saved(train, prec, rows, width, width * (norm.weight_heads if norm else 1))
    if train.method == "full" and (norm is None or norm.scale):  # a weightless norm has no weight gradient
        saved += rows * width * (FP32 if model.traits.norm == "rms_fp32_out" else kept)
    return saved


def centered_norm_saved(train: TrainSpec, prec: Precision, rows: int, width: int, weight: int) -> int:
    """What Cohere's LayerNorm keeps for backward (transformers' CohereLayerNorm.forward: x in
    fp32, x - mean computed twice, once squared for the variance and once scaled by
    rsqrt(variance + eps), then the fp32 weight times that, cast back): the two fp32 centered
    inputs (rows*width*4 each, kept by pow and by the product), rsqrt (rows*4) and the weight's
    fp32 copy (``weight``*4; none where the weight is fp32 already: QLoRA's, fp32 master
    weights); when the weight is trained, the normalized fp32 input too (rows*width*4)."""
    saved = 2 * rows * width * FP32 + rows * FP32
    saved += weight * FP32 if parameter_bytes(train, prec) != FP32 else 0
    if train.method == "full":
        saved += rows * width * FP32
    return saved


def per_layer_inputs_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gemma 4's per-layer inputs outside the layers (transformers 5.23
    Gemma4TextModel.get_per_layer_inputs / project_per_layer_inputs): the combined per-layer
    inputs, (projection + embedding) * 2^-1/2, T*L*p in the residual stream's dtype, which every layer's
    product with its slice keeps (the slices are views of it); when the projection needs a
    gradient (per_layer_model_projection targeted, or full fine-tuning) its norm over p keeps
    its fp32 input and two fp32 values per row (T*L rows, :func:`norm_saved`) and the
    projection's adapter its input (the adapter kind's ``saved``). Tracer, tiny Gemma 4 LoRA: one
    bf16 [2, 48, 4, 8] product, the norm's fp32 [2, 48, 4, 8] input and [2, 48, 4, 1] pow / add
    outputs. 0 without per-layer inputs."""
    p = model.per_layer_input
    if not p:
        return 0
    t, wide = train.tokens, model.num_layers * model.per_layer_input
    saved = t * wide * prec.stream  # fp32 with an fp32 embedding (QLoRA, mixed): the sum takes its dtype
    roots = targets.targeted_root_linears(model, train.target_modules) if train.is_adapter else ()
    if roots or train.method == "full":
        rows = t * model.num_layers
        saved += rows * p * FP32 + rows * FP32 * (2 if model.traits.pow_norm else 1)
        if train.method == "full":
            saved += rows * p * FP32 + t * model.hidden_size * prec.compute  # the norm's product, the Linear's input
    adapter = variant(train).adapter
    return saved + sum(adapter.saved(lin, train, prec) for lin in roots)


def per_layer_input_core_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What a Gemma 4 layer's per-layer input block keeps beside its Linears' adapters, one
    layer: act(gate(x)) * per_layer_input keeps the gate output (which the activation keeps)
    and act's output, 2*T*p*hidden; trained whole (full fine-tuning) also per_layer_projection's
    input, the product, T*p*c, and the gate's input, the layer's output before the block
    (T*h*c) (transformers 5.23 Gemma4TextDecoderLayer.forward). 0 without per-layer inputs."""
    p = model.per_layer_input
    if not p:
        return 0
    t = train.tokens
    saved = 2 * t * p * prec.hidden
    if train.method == "full":
        saved += t * (p + model.hidden_size) * prec.compute
    return saved


def norm_output_bytes(model: ModelSpec, prec: Precision) -> int:
    """Bytes per element of a hidden norm's output: the residual stream's dtype, or fp32 for
    nn.LayerNorm under autocast (CUDA autocast runs layer_norm in fp32; StarCoder2), whose
    readers then each cast it to the compute dtype themselves (tracer, StarCoder2-3B 2 layers,
    full fine-tuning, batch 4 x 2048: q, k and v each keep their own bf16 copy of the fp32
    norm output, two T x h more per layer than one shared input)."""
    return FP32 if model.traits.norm == "layer" and prec.autocast else prec.stream


def layer_output_bytes(model: ModelSpec, prec: Precision) -> int:
    """Bytes per element of a decoder layer's output, the next layer's input: the residual
    stream's dtype, or fp32 for a mixture-of-experts layer behind an nn.LayerNorm under
    autocast. The routed experts accumulate into a zeros tensor of their input's dtype (the
    norm's fp32 output, :func:`norm_output_bytes`), so the MoE output and the residual sum
    after it are fp32 (transformers modeling_phimoe.PhimoeExperts.forward,
    ``torch.zeros_like(hidden_states)``; tracer, Phi-3.5-MoE 2 layers, LoRA autocast with
    checkpointing, batch 4 x 2048: layer 1's checkpointed input an fp32 [4, 2048, 4096],
    layer 0's the bf16 embedding)."""
    return FP32 if model.layer.moe is not None and norm_output_bytes(model, prec) == FP32 else prec.stream


def checkpoint_inputs(model: ModelSpec, train: TrainSpec, prec: Precision, first: int = 0) -> int:
    """The inputs the checkpoints keep of layers ``first`` on: the embedding output for layer 0
    (the residual stream's dtype) and the layer before's output for the others
    (:func:`layer_output_bytes`)."""
    return train.tokens * model.hidden_size * sum(
        layer_output_bytes(model.kind_view(j - 1), prec) if j else prec.stream for j in range(first, model.num_layers))


def uses_eager(model: ModelSpec, train: TrainSpec) -> bool:
    """Whether attention runs transformers' eager path: the model needs it (softcapping,
    sinks) or the training script asks for it (``attn_implementation="eager"``). Anything
    else is planned as the flash / memory-efficient kernel, flash_attention_2 included (it keeps
    what SDPA's flash kernel keeps)."""
    return model.eager_attention or train.attn_implementation == "eager"


def attention_core_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Tensors the attention kernel keeps for backward, one layer.

    Flash / memory-efficient SDPA (the kernel a GPU uses for these models): the rotated q and
    k, v and the output (T*(2*q_dim + 2*kv_dim)*c; GQA is passed natively, no repeat) and
    the log-sum-exp, batch*heads*seq*4 (Dao et al. 2022, FlashAttention: O(seq) memory).
    With a fused qkv_proj, the whole qkv output stays alive behind v.
    The eager path (Gemma-2, whose logit softcapping SDPA cannot do) keeps, per
    batch*heads*seq*seq score: the softcapped scores (tanh output, c bytes), the fp32 softmax
    output (4) and its copy in the compute dtype that multiplies v (c); and for its two
    matmuls q (the contiguous copy the batched matmul makes of it) and k and v expanded to
    all heads (repeat_kv's copies), 3*T*q_dim*c, but not its output, which no op keeps
    (transformers' eager_attention_forward; tracer, Gemma-2-2B: per layer one [4, 8, 2048,
    256] q copy, two [4, 4, 2, 2048, 256] k / v copies, and the three score tensors).
    c here is :attr:`Precision.attention` (fp32 for 4-bit methods without autocast), and the
    probabilities :attr:`Precision.eager_probabilities`.
    """
    if model.layer.deltanet is not None:  # a Gated DeltaNet layer's token mixer (planner.memory.deltanet)
        from planner.memory import deltanet

        return deltanet.core_saved(model, train, prec)
    t, c = train.tokens, prec.attention
    if model.layer.mla is not None:
        return mla_attention_saved(model, train, prec)
    # a KV-shared layer (Gemma 4) passes the keys and values an earlier layer made and keeps
    kv = 0 if model.traits.kv_shared else 2 * model.kv_dim
    if repeats_kv_unmasked(model, train, prec):  # k and v repeated to all heads: the kernel keeps those
        kv = 2 * model.q_dim
    saved = t * (2 * model.q_dim + kv) * c
    if model.layer.by_role("qkv") and prec.hidden == c:
        # Fused qkv (Phi-3): v is a slice of the qkv output, so keeping v keeps the whole
        # T*(q_dim + 2*kv_dim) storage alive (the tracker counts storages, as the allocator does).
        # With an fp32 hidden stream (4-bit methods) SDPA keeps autocast copies instead.
        saved += t * (model.q_dim + model.kv_dim) * c
    lse = train.batch_size * model.num_heads * train.seq_len * FP32
    if not uses_eager(model, train):
        return saved + lse
    scores = train.batch_size * model.num_heads * train.seq_len * train.seq_len
    if model.traits.attention_sinks:
        # gpt-oss: the softmax runs over the scores and a sink column: the probabilities (seq + 1
        # columns, :func:`sink_softmax`), the row maxima's int64 indices and the output (tracer,
        # tiny gpt-oss: q, repeated k and v, [b, heads, s, s + 1] probabilities, int64
        # [b, heads, s, 1] indices, the attention output).
        sink = sink_softmax(model, train, prec)
        return 4 * t * model.q_dim * c + sink.saved + train.batch_size * model.num_heads * train.seq_len * 8
    # the fp32 softmax and its c-byte copy, and with logit softcapping (Gemma-2) the tanh output
    # (tracer, tiny Llama asked for eager: 6*B*H*S^2 + c*T*(q_dim - 2*kv_dim) - 4*B*H*S more
    # than SDPA per layer, for lora, qlora and dora alike)
    softcapped = model.eager_attention
    return (3 * t * model.q_dim * c + scores * (prec.eager_probabilities + (c if softcapped else 0))
            + eager_fused_qkv_kept(model, train, prec))


@dataclass(frozen=True)
class SinkSoftmax:
    """The score tensors of eager attention with sinks (gpt-oss), one layer, in bytes: what it
    keeps for backward (``saved``), what its forward holds beside them at its peak (``forward``),
    and at the softmax backward what it still keeps (``kept``) and its workspace (``backward``);
    and attention's other tensors at the forward peak (``forward_rest``)."""

    saved: int
    forward: int
    kept: int
    backward: int
    forward_rest: int  # attention's other tensors at the forward peak (q, k, v and their copies)


def sink_softmax(model: ModelSpec, train: TrainSpec, prec: Precision) -> SinkSoftmax:
    """Eager attention with a learned sink logit per head (transformers 5.23 modeling_gpt_oss.py,
    eager_attention_forward): ``scores * scaling + mask`` (the sum, in a = the wider of the matmul's
    dtype c, :attr:`Precision.attention`, and the mask's, the residual stream's), the sinks joined
    as a last column (torch.cat), the row maximum subtracted, softmax in that joined dtype j, the
    sink column dropped (a view) and cast to v's dtype for the matmul with v (under autocast,
    a c-byte copy; none when j is c). j is fp32 when the sinks are (prepare_model_for_kbit_training
    for 4-bit methods, fp32 master weights under `mixed`), else c. With P = B*H*S*(S+1) joined
    scores and N = B*H*S*S:

    - saved: the softmax output and its c-byte copy, P*j + P*c (the copy only when c != j);
    - forward peak, at the subtraction (the sum still held by the forward's variable, the joined
      logits and their difference): N*a + 2*P*j beside the saved set without its scores;
    - softmax backward: the softmax output still kept (the copy is freed by the matmul's backward)
      and two joined-width gradients (the softmax's input gradient with the sliced-back gradient
      of its output, then with the max's zeros and scatter), 2*P*j;
    - beside the forward peak: the rotated q and k, v and the repeated k and v (repeat_kv's
      copies, where there are fewer kv heads), in the projections' dtype (the hidden stream's),
      held by the forward's variables, and autocast's c-byte copies of q and the repeated k that
      the first matmul keeps where that dtype is not c; the row maxima's int64 indices. Not yet
      made: the matmul with v, its copy of v and the output.

    Tracer, gpt-oss-20b 2 layers, QLoRA with checkpointing, batch 1 x 2048 and 8192: the
    recomputed layer's fp32 [1, 64, S, S] sum, [1, 64, S, S + 1] cat and sub at the peak; the
    softmax backward's fp32 softmax, slice_backward and _softmax_backward_data, then
    _softmax_backward_data, new_zeros and scatter (bf16 under LoRA and full fine-tuning)."""
    b, h, s, c = train.batch_size, model.num_heads, train.seq_len, prec.attention
    scores, probs = b * h * s * s, b * h * s * (s + 1)
    joined = FP32 if train.is_quantized or train.precision == "mixed" else c
    copy = c if c != joined else 0
    summed = max(c, prec.stream)
    t, q, kv, hidden = train.tokens, model.q_dim, model.kv_dim, prec.hidden
    repeated = 2 * t * q * hidden if model.num_kv_heads < model.num_heads else 0
    rest = t * (q + 2 * kv) * hidden + repeated + (2 * t * q * c if hidden != c else 0) + b * h * s * 8
    return SinkSoftmax(saved=probs * (joined + copy), forward=scores * summed + 2 * probs * joined,
                       kept=probs * joined, backward=2 * probs * joined, forward_rest=rest)


def mla_attention_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What multi-head latent attention keeps for backward, one layer (transformers 5.23
    DeepseekV3Attention.forward), in the attention dtype c (:attr:`Precision.attention`), H heads
    of q / k width qk = nope + rope and v width dv, latents of q_rank and kv_rank:

    - nothing of RoPE's (it multiplies the q_b and kv_a outputs' rope slices by the cos / sin
      tables, which need no gradient, so autograd keeps only the tables);
    - q, the torch.cat of its nope and rotated parts, and k, a new tensor the nope and rope
      keys are copied into: 2*T*H*qk;
    - v is a view of the kv_b output, which it keeps whole: T*H*(nope + dv) (with an fp32 hidden
      stream under autocast, the kernel keeps autocast's c-byte copy of v instead, T*H*dv);
    - the kernel's output, T*H*dv, and its logsumexp. q / k heads of 192 against v heads of 128
      rule out flash attention (PyTorch's sdp_utils.cpp, check_head_dim_size_flash: q, k, v of
      one last dimension); CUDA runs the memory-efficient kernel (check_head_dim_size_mem_efficient
      lets v differ), whose fp32 logsumexp has the sequence padded to a multiple of 32:
      B*H*ceil(S/32)*32*4. The tracer runs that kernel's saved set (probes.kernels).
    The latent norms are :func:`norm_saved` entries of their own (sites q_a, kv_a)."""
    mla, t, c, heads = model.layer.mla, train.tokens, prec.attention, model.num_heads
    if uses_eager(model, train):
        raise ValueError("eager attention with multi-head latent attention is not planned yet: "
                         "`probe --device fake` traces it")
    # v keeps the kv_b output whole, unless autocast casts it (an fp32 hidden stream): its own copy
    v = t * heads * (mla.nope + mla.v if prec.hidden == c else mla.v) * c
    lse = train.batch_size * heads * ceil_div(train.seq_len, 32) * 32 * FP32
    return t * heads * (2 * mla.qk + mla.v) * c + v + lse + sparse_mask_bias(model, train, prec)


def indexer_workspace(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """DeepSeek-V3.2's indexer scoring every key, one layer, at its worst instant (transformers
    5.23 DeepseekV32Indexer.forward, under torch.no_grad: none of it is kept for backward). With
    H index heads of D dims (R of them rotated), a the Linear outputs' bytes and m the scoring
    matmul's (the compute dtype under autocast, which casts its fp32 inputs; fp32 without it:
    the indexer upcasts q and k itself):

    - wq_b's output (T*H*D*a), alive behind the pass-through view of it, the rotated part
      (T*H*R*a) and q, their torch.cat (T*H*D*a);
    - ``q.float()`` (T*H*D*4, none when a is fp32) and autocast's m-byte cast of it (T*H*D*m,
      under autocast only);
    - torch.matmul's broadcast of the one key per token to every query: the (batch, seq, D, seq)
      expansion reshaped to (batch * seq, D, seq) for bmm is a copy, B*S*D*S*m, when batch > 1 (at
      batch 1 the reshape is a view of the expansion), beside the (batch, seq, H, seq) scores,
      B*S*H*S*m; then the scaled and the rectified scores, 2*B*S*H*S*m;
    - the key's own tensors, T*D each: wk's output, k_norm's fp32 output (CUDA autocast runs
      layer_norm in fp32), its rotated and joined copies.
    0 without an indexer. Tracer, DeepSeek-V3.2 widths cut to 2 layers: the forward peak of
    full fine-tuning with checkpointing at seq 8192 (a 17.2 GB bf16 [8192, 128, 8192] copy)."""
    idx = model.layer.indexer
    if idx is None:
        return 0
    mla, t, s, a = model.layer.mla, train.tokens, train.seq_len, prec.hidden
    m = prec.compute if prec.autocast else FP32
    q = t * idx.heads * idx.head_dim
    queries = 2 * q * a + t * idx.heads * mla.rope * a + q * ((FP32 if a != FP32 else 0) + (m if prec.autocast else 0))
    scores = train.batch_size * s * s * idx.heads * m
    broadcast = train.batch_size * s * s * idx.head_dim * m if train.batch_size > 1 else 0
    return queries + max(broadcast + scores, 2 * scores - q * ((FP32 if a != FP32 else 0) + (m if prec.autocast else 0)))


SPARSE_BIAS_ALIGN = 8  # PyTorch's preprocess_mask: a memory-efficient bias row padded to 8 keys


def sparse_mask_bias(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """DeepSeek-V3.2's attention mask as the memory-efficient kernel keeps it, one layer: the
    indexer's top-k folded into the causal mask (a bool (batch, 1, seq, seq), always built:
    transformers 5.23 DeepseekV32Model.forward passes allow_is_causal_skip=False) reaches SDPA,
    whose composite turns it into an additive bias in the attention dtype, each row padded to a
    multiple of 8 keys when the sequence is not (PyTorch's attention.cpp,
    convert_boolean_attn_mask_ and preprocess_mask), which the kernel keeps for backward:
    B*S*ceil8(S)*c. 0 without an indexer. Tracer, tiny DeepSeek-V3.2, seq 100: one bf16
    [2, 1, 100, 104] tensor per layer, the [2, 1, 100, 100] view of it kept."""
    if model.layer.indexer is None:
        return 0
    s = train.seq_len
    return train.batch_size * s * ceil_div(s, SPARSE_BIAS_ALIGN) * SPARSE_BIAS_ALIGN * prec.attention


SDPA_GQA_MAX_HEAD_DIM = 256  # transformers passes grouped k / v to SDPA natively only up to this head_dim


def repeats_kv_unmasked(model: ModelSpec, train: TrainSpec, prec: Precision) -> bool:
    """Whether SDPA gets k and v repeated to all heads although no mask is passed: transformers'
    use_gqa_in_sdpa (integrations/sdpa_attention.py) passes grouped k / v natively only without
    a mask and with head_dim <= 256, so a layer of wider heads (Gemma 4's full-attention layers,
    512) repeats them (repeat_kv), T*q_dim each, and the kernel keeps the copies (tracer, Gemma 4
    31B 2 layers, LoRA bs1x2048: two bf16 [1, 4, 8, 2048, 512] clones in the full layer). The
    masked case (sliding layers past their window) is :func:`sliding_mask_saved`'s."""
    return (not uses_eager(model, train) and copies_repeated_kv(model, prec)
            and model.head_dim > SDPA_GQA_MAX_HEAD_DIM)


def copies_repeated_kv(model: ModelSpec, prec: Precision) -> bool:
    """Whether repeating k and v to all heads (transformers' repeat_kv: expand, then reshape)
    makes new tensors the kernel keeps: with several kv heads the reshape copies; with one it
    merges a size-1 dim with the expanded one and returns a view of the original, so nothing new
    is kept (tracer, Gemma 4 E2B 10 layers and Gemma-3-1B 2 layers, LoRA, one kv head: no repeated
    k / v in the masked sliding layers nor in E2B's 512-wide full layers), unless autocast casts
    that view for the kernel (the attention dtype is not the projections': an fp32 hidden stream,
    QLoRA) or the attention runs in fp32 (QLoRA without autocast, an fp32 model), either of which
    materializes it (tracer, Gemma-3-1B 2 layers, QLoRA bs4x1600, autocast and pure: the plan
    0.15% under without them)."""
    if model.num_kv_heads >= model.num_heads:
        return False
    return model.num_kv_heads > 1 or prec.hidden != prec.attention or prec.attention == FP32


def eager_fused_qkv_kept(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The rest of a fused qkv_proj output that eager attention keeps alive behind v, one layer:
    T*(q_dim + kv_dim)*c, beside the T*q_dim*c of v that :func:`attention_core_saved` counts.

    v is a strided slice of the qkv output, (b, heads, s, d) with strides (s*(q_dim + 2*kv_dim),
    d, q_dim + 2*kv_dim, 1). torch.matmul(probs, v) folds v's batch and head dims into one
    (``expand(...).reshape(b*heads, s, d)``) and bmm keeps that for backward: a view when
    b = 1 (the head stride alone), so the whole qkv storage stays alive; a contiguous T*q_dim
    copy when b > 1 (the strides do not merge), which is the v counted already. Only without
    repeat_kv (heads == kv heads: Phi-3; a repeat copies v) and when v reaches the matmul in
    the qkv output's dtype (no autocast copy, as in the SDPA case). Tracer, Phi-3-mini 2
    layers, QLoRA pure fp32 eager, batch 1, seq 1664 (4 x DDP and 1 GPU): one fp32 [1, 1664,
    9216] qkv output per layer at the backward peak besides the rotated q and k ([1, 32, 1664,
    96] cats); at batch 3 no qkv output but a [3, 32, 1664, 96] v copy."""
    if not model.layer.by_role("qkv") or prec.hidden != prec.attention:
        return 0
    if model.num_kv_heads != model.num_heads or train.batch_size != 1:
        return 0
    return train.tokens * (model.q_dim + model.kv_dim) * prec.attention


def mlp_core_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The gated MLP keeps gate and up outputs and act(gate) for backward: 3*T*I*c
    (fp32 hidden stream for 4-bit methods: 3*T*I*4, see :func:`precision`). A plain MLP
    (an ``fc_in`` Linear, StarCoder2's c_fc -> gelu -> c_proj) keeps only the activation's
    input, T*I*c; its output is c_proj's input, which only c_proj's weight gradient or adapter
    keeps (:func:`linear_inputs_saved`, the adapter kind's ``saved``)."""
    if model.layer.moe is not None:
        return moe_saved(model, train, prec)
    if model.traits.activation == "xielu":
        return xielu_saved(model, train, prec)
    gates = 1 if model.layer.by_role("fc_in") else 3
    return gates * train.tokens * model.intermediate_size * prec.hidden


def dense_mlp_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A gated MLP beside a mixture of experts (Gemma 4's Gemma4TextMLP): its gate and up outputs
    and act(gate), 3*T*I*hidden, as :func:`mlp_core_saved` for a dense layer, and when down_proj
    is trained whole (full fine-tuning) its input act(gate)*up, T*I*c."""
    t, i = train.tokens, model.intermediate_size
    return 3 * t * i * prec.hidden + (t * i * prec.compute if train.method == "full" else 0)


def mlp_backward_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the MLP's activation backward makes beyond the layer's saved set, one layer (the MLP
    block of full fine-tuning's first-layer walk, layer.first_layer_backward_walk), a = hidden
    bytes: a gated MLP the gradients of gate, up and act(gate), 3*T*I*a; a plain MLP (StarCoder2's
    c_fc -> gelu) the activation's output and input gradients, 2*T*I*a; xIELU (Apertus) the
    where's two branch gradients and the fp32 gradients of its products, T*I*(4f + 1), f = 4
    under autocast (expm1 and softplus run in fp32), else a. Tracer, Apertus widths h 1024, I
    8192, 2 layers, 512-token vocabulary, full fine-tuning with checkpointing, batch 2 x 1024:
    the first layer's MLP backward 11*T*I above the gated figure under bf16 autocast (so 17), 3
    in pure bf16 (9); the same model with GELU 2*T*I below it (4); at other widths (h 512, I
    6144, 1 x 2048; h 1024, I 4096, 4 x 512) the same 11*T*I."""
    t, i, a = train.tokens, model.intermediate_size, prec.hidden
    if model.traits.activation == "xielu":
        return t * i * (4 * (FP32 if prec.autocast else a) + 1)
    return (2 if model.layer.by_role("fc_in") else 3) * t * i * a


def xielu_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Apertus's plain MLP with xIELU (transformers' XIELUActivation._xielu_python, the path
    outside its optional CUDA kernel): where(x > 0, a_p*x*x + b*x, (expm1(min(x, eps)) - x)*a_n
    + b*x) keeps, of x = up_proj's output (T x I, hidden bytes): x itself (for min and the
    products), the bool mask x > 0 (1 byte), a_p*x (kept by its product with x) and expm1's
    output; when the alphas are trained (full fine-tuning) also expm1(...) - x, which a_n's
    gradient needs. Under autocast those are fp32: CUDA autocast runs expm1 and softplus in
    fp32 (softplus(a_p) is a 1-element tensor, so a_p*x is fp32 too); without it they are in
    the hidden dtype. T*I*(hidden + 1 + 2f), 3f when trained, f = 4 under autocast. Tracer,
    tiny Apertus (I 160, T 128, 2 layers) against the same model with GELU: LoRA bf16 autocast
    368,672 B more, QLoRA 368,680, full fine-tuning 532,560 (8 to 80 B of them scalars)."""
    f = FP32 if prec.autocast else prec.hidden
    kept = 3 if train.method == "full" else 2
    return train.tokens * model.intermediate_size * (prec.hidden + 1 + kept * f)


def moe_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What one mixture-of-experts MLP keeps for backward, with transformers' default
    ``grouped_mm`` experts path (its tensors do not depend on routing balance; balanced
    routing assumed otherwise). S = T*k (token, expert) pairs, x = bytes of the MLP's input
    (the residual stream's dtype), E experts of width I.

    - Router: its fp32 softmax (T*E*4) and top-k indices (T*k*8), and when the top-k
      weights are renormalized their fp32 values and sum (T*k*4 + T*4); gpt-oss instead keeps
      the indices and a c-byte softmax over the k values (T*k*(8 + c)). Its input (T*h*x)
      when the router weight or its LoRA is trainable.
    - Experts: the sort and its inverse (three int64 S-vectors, 24*S), int32 group offsets
      (4*E), the gate_up output (S*2I*x), act(gate) (S*I*x), the routing weights (S*w, w = 4
      for Mixtral's fp32 ones, else c) and the down output (S*h*x); when the expert weights
      are trainable (full fine-tuning, or LoRA on them) also the gathered input (S*h*x) and
      act(gate)*up (S*I*x). gpt-oss's clamped SwiGLU keeps three more S*I*x (its
      clamp / sigmoid / (up + 1) chain) and, trainable, the sorted expert ids (8*S).
    - LoRA on a fused weight (peft's ParamWrapper): the merged weight W + s*B@A, a whole new
      E*in*out tensor in the weight's dtype, which the grouped matmul keeps (Qwen3-30B-A3B:
      1.2 GB per layer), and the factors' copies in that dtype (E*r*(in + out)).
    Tracer, tiny Qwen3-MoE / Mixtral / gpt-oss (h 128, I 48, 8 experts, top-2, T 40, forced
    balanced routing): these sums to the byte, per layer, for full fine-tuning and LoRA.
    """
    return sum(moe_saved_parts(model, train, prec).values())


def moe_saved_parts(model: ModelSpec, train: TrainSpec, prec: Precision) -> dict[str, int]:
    """:func:`moe_saved` by part: router, experts and the LoRA-merged expert weights."""
    moe = model.layer.moe
    t, h, i, x, c = train.tokens, model.hidden_size, moe.intermediate, prec.stream, prec.compute
    pairs = t * moe.top_k
    adapted = targets.targeted_parameters(model, train)
    parts = {tg.part for tg in adapted}
    experts_train = experts_trained(model, train)
    router_train = train.method == "full" or "router" in parts
    if moe.dispatch == "dense":
        return dense_moe_saved_parts(model, train, prec, experts_train, router_train)
    if moe.activation == "clamped_swiglu":
        router = pairs * (8 + c)
        per_pair = (2 * h + 7 * i) * x + 24 + c + 8 if experts_train else (h + 6 * i) * x + 24 + c
    elif moe.routing == "sigmoid_group":
        router, w = sigmoid_router_saved(model, train, prec, router_train)
        per_pair = (2 * h + 4 * i) * x + 24 + w if experts_train else (h + 3 * i) * x + 24 + w
        router_train = False  # its input is counted above
    else:
        router = t * moe.experts * FP32 + pairs * 8 + ((pairs + t) * FP32 if moe.renormalize else 0)
        w = routing_weight_bytes(model, prec)
        per_pair = (2 * h + 4 * i) * x + 24 + w if experts_train else (h + 3 * i) * x + 24 + w
    router += t * h * x if router_train else 0
    router += router_module_saved(model, train, prec) if moe.router_linear else 0
    # Phi-3.5-MoE's input jitter (training only): the block and then its router multiply the normed
    # input in place by uniform noise of its shape and dtype, and each product keeps its noise,
    # 2*T*h in the norm output's dtype (tracer, Phi-3.5-MoE 2 layers LoRA bs1x512: two fp32
    # [512, 4096] per layer, the plan 0.55% under without them)
    router += 2 * t * h * norm_output_bytes(model, prec) if moe.jitter else 0
    weight = parameter_bytes(train, prec)
    # the factors' copies in the weight's dtype: none when the weight is fp32, the factors' own
    # dtype (QLoRA's fp32 experts: Tensor.to returns the factor itself; tracer, OLMoE-1B-7B 2
    # layers, QLoRA all-linear: no (64, 2048, 32) copy, the plan 1.1% over with them)
    copies = weight != FP32
    merged = sum((tg.weight + (tg.experts * tg.rank * (tg.in_features + tg.out_features) if copies else 0)) * weight
                 for tg in adapted)
    return {"router": router, "experts": pairs * per_pair + 4 * moe.experts, "merged": merged}


def experts_trained(model: ModelSpec, train: TrainSpec) -> bool:
    """Whether the experts' weights train (full fine-tuning, or LoRA on a fused expert weight):
    then their grouped matmuls keep their inputs."""
    return train.method == "full" or bool({tg.part for tg in targets.targeted_parameters(model, train)}
                                          & {"gate_up", "down"})


def router_module_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gemma 4's router module beyond a softmax router's tensors, one layer (transformers 5.23
    Gemma4TextRouter.forward): the renormalized top-k weights times per_expert_scale[top_k_index]
    keeps the gathered scales, T*k in the parameter's dtype, when the weights need a gradient
    (router.proj adapted, or full fine-tuning), and the fp32 weights themselves when the scales
    train (T*k*4: the in-place renormalization's saved copy is the weights before it); a trained
    ``scale`` (full fine-tuning) keeps the normed input it multiplies, T*h in the residual
    stream's dtype (tracer, Gemma-4-26B-A4B cut to 2 and 4 layers, bs4x2048). Its projection's input is its
    Linear's (the adapter kind's ``saved``; full fine-tuning: :func:`moe_saved_parts`'s router input)."""
    moe = model.layer.moe
    full = train.method == "full"
    adapted = full or any(lin.role == "router" and lin.name in targets.targeted_names(model, train)
                          for lin in model.layer.linears)
    t = train.tokens
    return (t * moe.top_k * parameter_bytes(train, prec) if adapted else 0) + (
        t * (model.hidden_size * prec.stream + moe.top_k * FP32) if full else 0)


def moe_input_norms_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The norms that read a Gemma 4 layer's residual beside pre_feedforward_layernorm (site
    "moe_in": the router's weightless norm and pre_feedforward_layernorm_2), one layer: each as
    :func:`norm_saved`, less its fp32 upcast where the residual stream is fp32 already (QLoRA,
    `mixed`): ``x.float()`` returns the residual itself, which pre_feedforward_layernorm keeps
    (tracer, Gemma-4-26B-A4B cut to 2 and 4 layers, QLoRA bs4x2048: two T*h*4 per layer fewer
    than each norm's own upcast)."""
    norms = model.layer.norms_at("moe_in")
    shared = len(norms) * train.tokens * model.hidden_size * FP32 if prec.stream == FP32 else 0
    return sum(norm_saved(model, train, prec, n) for n in norms) - shared


def dense_moe_saved_parts(model: ModelSpec, train: TrainSpec, prec: Precision, experts_train: bool,
                          router_train: bool) -> dict[str, int]:
    """:func:`moe_saved_parts` where every expert runs on every token (Llama 4's Llama4TextMoe,
    transformers 5.23): the input repeated E times (E*T rows) and multiplied by each row's router
    score, then two batched matmuls over the E experts (torch.bmm), whatever the routing.

    - Router (Llama4Router): the top-k indices (T*k*8, kept by topk and by the scatter of the
      chosen logits into a -inf row) and the fp32 sigmoid of that row (T*E*4); its input
      (T*h*x) when its weight trains.
    - Experts, R = E*T rows: the repeated input (R*h*x, kept by the product with the scores),
      the scores' column (R, a copy of the transposed scores, in the matmul dtype m: the compute
      dtype under autocast, else the stream's), the gate_up output (R*2I*m) and act(gate)
      (R*I*m); trainable experts (full fine-tuning) also keep the scaled input and act(gate)*up,
      the two matmuls' inputs (R*(h + I)*m).
    - Under autocast with experts and router stored in another dtype than the compute dtype
      (QLoRA's fp32, `mixed`'s fp32 masters), each matmul runs on a compute-dtype copy of its
      weight and keeps it: E*(2I*h + I*h + h)*c a layer ("weight_copies").
    Tracer (saved-tensor hooks on Llama4TextMoe, h 64, I 96, E 4, T 40): these tensors, bf16
    frozen, bf16 trainable and fp32 under bf16 autocast."""
    moe = model.layer.moe
    t, h, i, x, c, e = train.tokens, model.hidden_size, moe.intermediate, prec.stream, prec.compute, moe.experts
    m = c if prec.autocast else x
    rows = t * e
    router = t * moe.top_k * 8 + t * e * FP32 + (t * h * x if router_train else 0)
    experts = rows * (h * x + m + 3 * i * m) + (rows * (h + i) * m if experts_train else 0)
    copies = e * (3 * i * h + h) * c if prec.autocast and parameter_bytes(train, prec) != c else 0
    return {"router": router, "experts": experts, "merged": 0, "weight_copies": copies}


def dense_moe_backward_workspace(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The backward of experts that see every token (:func:`dense_moe_saved_parts`), R = E*T
    rows, with the layer's saved set alive: in the matmul dtype m, the gradient of act(gate)*up
    (R*I) and of its two factors (2*R*I) at once, 3*R*I*m; trained experts (full fine-tuning)
    have made the down weight's gradient (E*I*h) and freed act(gate)*up, which only that
    gradient needed: 2*R*I*m + E*I*h*g (tracer, Maverick 4 layers full with checkpointing, batch
    4 x 2048: the first MoE layer's backward, the plan 7.4% under without either). With an fp32 stream (QLoRA) the
    stream's gradients reach the experts as a m-byte copy of the output's gradient (R*h) beside
    the gradient of act(gate)*up (R*I), the larger moment there: R*(h + I)*m. Tracer (byte
    tracker on Llama4TextMoe, h 64 / 128, I 96 / 192, E 8 / 16, T 40): bf16 3*R*I*2 live at the
    backward peak; fp32 under bf16 autocast R*(h + I)*2 live, the repeated fp32 input freed
    before it (the plan then over by up to R*h*2). With checkpointing and an fp32 stream the
    moment is the recomputed forward's second matmul: R*(h*(x + 2m) + I*m) above the recomputed
    saved set (tracer, Maverick 4 layers QLoRA with checkpointing, batch 1 x 2048: the scaled
    fp32 input, act(gate)*up, the down output and the output gradient's copy at the peak)."""
    moe = model.layer.moe
    x, c = prec.stream, prec.compute
    m = c if prec.autocast else x
    rows = train.tokens * moe.experts
    # trained experts (full fine-tuning): the down weight's gradient, made before this moment
    down_grad = moe.experts * moe.intermediate * model.hidden_size * trainable_bytes_per_param(train, prec) \
        if train.method == "full" else 0
    if x == m:
        # trained, act(gate)*up (kept for the down weight's gradient) is freed when that is made
        return rows * (2 if down_grad else 3) * moe.intermediate * m + down_grad
    if train.gradient_checkpointing:
        # the recomputed forward's second matmul, beside the output gradient's m-byte copy: the
        # scaled input in the stream dtype, act(gate)*up and the down output, R*(h*(x + 2m) + I*m)
        return rows * (model.hidden_size * (x + 2 * m) + moe.intermediate * m)
    return rows * (model.hidden_size + moe.intermediate) * m


def dense_moe_forward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """The last layer's forward at its experts' second matmul (dense dispatch,
    :func:`dense_moe_saved_parts`), R = E*T rows: (what the layer holds before it, what the
    experts are forming). Without checkpointing the layer has kept its saved set through the
    experts' (:func:`layer_saved_sequence` up to "mlp"); with it, only the experts' locals: the
    gate_up output (R*2I*m) and the down weight's compute-dtype copy where autocast makes one.
    Forming: the scaled input in the stream dtype (R*h*x, a local of the experts' forward) and
    act(gate)*up (R*I*m) unless trainable experts keep them, and the down output (R*h*m).
    Tracer, Maverick 4 layers QLoRA batch 1 x 2048: the forward peak, 2.2% above the logits'
    moment, with these three beside both MoE layers' saved sets. (0, 0) for other experts."""
    moe = model.layer.moe
    if moe is None or moe.dispatch != "dense":
        return 0, 0
    t, h, i, x, c = train.tokens, model.hidden_size, moe.intermediate, prec.stream, prec.compute
    m = c if prec.autocast else x
    rows = t * moe.experts
    parts = moe_saved_parts(model, train, prec)
    trained = train.method == "full"
    working = rows * h * m + (0 if trained else rows * (h * x + i * m))
    if train.gradient_checkpointing:
        copy = moe.experts * i * h * c if parts["weight_copies"] else 0
        return rows * 2 * i * m + copy, working
    seq = layer_saved_sequence(model, train, prec)
    before = sum(size for _, size in seq[:[name for name, _ in seq].index("mlp") + 1])
    return before, working


def qk_l2_norm_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Llama 4's qk-norm (Llama4TextL2Norm, no weight) on its RoPE layers, over each head of q
    and k after RoPE: x.float() * rsqrt(mean(x^2) + eps) keeps the fp32 input and the fp32
    rsqrt per head, T*(q_dim + kv_dim)*4 + T*(heads + kv_heads)*4 (its output, cast back, is
    attention's input). Tracer (saved-tensor hooks, Llama4TextAttention layer 0): a fp32
    [1, 40, 4, 16] and [1, 40, 4, 1] for q, the same for k."""
    if not model.traits.qk_l2_norm:
        return 0
    return train.tokens * (model.q_dim + model.kv_dim + model.num_heads + model.num_kv_heads) * FP32


def attn_temperature_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Llama 4's attention temperature on its no-RoPE layers: q times a per-position fp32 scale
    (log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1, expanded over the batch), which the
    product keeps: seq*4."""
    return train.seq_len * FP32 if model.traits.attn_temperature else 0


def routing_weight_bytes(model: ModelSpec, prec: Precision) -> int:
    """Bytes of one routing weight of a mixture of experts: fp32 for Mixtral's (``weights_fp32``)
    and for DeepSeek-V3's fp32 router without autocast (:func:`sigmoid_router_saved`), else the
    compute dtype."""
    moe = model.layer.moe
    if moe.routing == "sigmoid_group":
        return prec.compute if prec.autocast else FP32
    return FP32 if moe.weights_fp32 and moe.activation != "clamped_swiglu" else prec.compute


def sigmoid_router_saved(model: ModelSpec, train: TrainSpec, prec: Precision, trained: bool) -> tuple[int, int]:
    """DeepSeek-V3's router (GLM-4.5's alike; transformers 5.23 DeepseekV3TopkRouter): one MoE
    layer's saved set, and the bytes of one routing weight. The router casts its input and
    weight to fp32 (``F.linear(x.type(float32), w.type(float32))``), which CUDA autocast casts
    back to the compute dtype: its tensors are r bytes, the compute dtype under autocast, else
    fp32. The matmul keeps the weight's r-byte copy for the input's gradient (E*h*r) and, when the
    router's weight or its LoRA trains, the input's r-byte copy (T*h*r); sigmoid keeps its
    output (T*E*r); the expert choice (bias-corrected scores, group top-k, masked top-k) keeps
    nothing but the top-k indices gather keeps (T*k*8); renormalizing (norm_topk_prob) keeps
    the gathered weights and their sum (T*k*r + T*r); the routed scaling is a scalar. The
    routing weights are r bytes each. Tracer, tiny GLM-4.5 (8 experts, 2 groups), LoRA bf16
    autocast: a bf16 [T, 8] sigmoid, an int64 [T, 2] top-k, a bf16 [T, 2] clone and [T, 1] sum;
    the router's LoRA (peft's ParamWrapper) keeps its merged weight instead of the weight's copy."""
    moe = model.layer.moe
    t, h, pairs = train.tokens, model.hidden_size, train.tokens * moe.top_k
    r = routing_weight_bytes(model, prec)
    lora = any(tg.part == "router" for tg in targets.targeted_parameters(model, train))
    weight = 0 if lora else moe.experts * h * r  # LoRA's merged weight (the "merged" part) is the one kept
    saved = weight + t * moe.experts * r + pairs * 8 + ((pairs + t) * r if moe.renormalize else 0)
    return saved + (t * h * r if trained else 0), r


def shared_expert_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What a mixture of experts' shared expert keeps for backward, one layer: a gated MLP of
    width I_s over every token (Linear modules, roles shared_gate / shared_up / shared_down):
    its gate and up outputs and act(gate), 3*T*I_s*hidden (as :func:`mlp_core_saved`), and
    when its down_proj is trained whole (full fine-tuning) that Linear's input act(gate)*up,
    T*I_s*c. Its input is the MoE block's, which the router keeps (:func:`moe_saved_parts`)
    (transformers 5.23 Qwen2MoeMLP: down_proj(act_fn(gate_proj(x)) * up_proj(x)))."""
    moe = model.layer.moe
    if moe is None or not moe.shared_intermediate:
        return 0
    t, i = train.tokens, moe.shared_intermediate
    # DeepSeek-V3's router keeps its own cast of the MoE input, not the input: the shared
    # expert's trained gate / up keep that (tracer, tiny GLM-4.5 full: one T x h more per layer)
    own_input = t * model.hidden_size * prec.stream if train.method == "full" and moe.routing == "sigmoid_group" else 0
    return 3 * t * i * prec.hidden + (t * i * prec.compute if train.method == "full" else 0) + own_input


def shared_output_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Qwen2-MoE's shared-expert gate, sigmoid(shared_expert_gate(x)) * shared_expert(x), one
    layer: the product keeps both factors, the shared expert's output (T*h*hidden) and the
    sigmoid's (T*1, which sigmoid keeps for its own backward too): T*(h + 1)*hidden
    (transformers 5.23 Qwen2MoeSparseMoeBlock.forward). 0 without that gate."""
    moe = model.layer.moe
    if moe is None or not moe.shared_scale:
        return 0
    return train.tokens * (model.hidden_size + 1) * prec.hidden


def moe_full_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int, int]:
    """Full fine-tuning without checkpointing, the last layer's grouped experts in backward once
    gate_up's weight gradient is formed (transformers 5.23 grouped_mm_experts_forward run back):
    (the layer's saved set already freed, the expert weight gradients made, the workspace).
    Freed: the shared expert's set (its backward ran first) and the experts' but the gathered
    input, which gate_up's weight gradient reads; made: every routed expert weight's gradient
    (E*3*I*h, in the weights' dtype); workspace: the gradients of the gate_up output and of the
    gathered input, S*(2I + h)*x, and the layer output's gradient in flight with its copy,
    2*T*h*x. Tracer, DeepSeek-V3 cut to 2 layers, full bf16 autocast, batch 4 x 2048: the
    [256, 4096, 7168] gradient beside the down one, [65536, 4096] and [65536, 7168] gradients and
    the [65536, 7168] gathered input, the backward peak, which the plan had 5.4% under (its
    embedding's moment). (0, 0, 0) with checkpointing, for adapters, or without grouped experts."""
    moe = model.layer.moe
    if (train.method != "full" or train.gradient_checkpointing or moe is None or moe.dispatch != "grouped"
            or moe.activation == "clamped_swiglu"):
        return 0, 0, 0
    t, h, i, x = train.tokens, model.hidden_size, moe.intermediate, prec.stream
    pairs = t * moe.top_k
    freed = (shared_expert_saved(model, train, prec) + shared_output_saved(model, train, prec)
             + moe_saved_parts(model, train, prec)["experts"] - pairs * h * x)
    made = moe.experts * 3 * i * h * parameter_bytes(train, prec)
    return freed, made, pairs * (2 * i + h) * x + 2 * t * h * x


def moe_backward_workspace(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The backward of a LoRA-wrapped fused expert weight: the grouped matmul's gradient with
    respect to the merged weight (E*in*out in the weight's dtype), which exists whole before
    peft turns it into the factors' gradients, and the gradient of its input (S*I*x for
    down, the layer's last). Down's (or gate_up's when only it is adapted) runs first in backward: the
    moment is the last MoE layer's, with every saved activation still alive (tracer,
    Mixtral-8x7B 2 layers, LoRA all-linear: 0.77 GB above the logits' moment, which its
    32k vocabulary keeps small). 0 without LoRA on the experts (full fine-tuning's expert
    gradients are :func:`grads`)."""
    moe = model.layer.moe
    if moe is None:
        return 0
    if moe.dispatch == "dense":
        return dense_moe_backward_workspace(model, train, prec)
    by_part = {t.part: t for t in targets.targeted_parameters(model, train)}
    first = by_part.get("down") or by_part.get("gate_up")
    if moe is None or first is None:
        return 0
    pairs, x = train.tokens * moe.top_k, prec.stream
    down = first.weight * parameter_bytes(train, prec) + pairs * moe.intermediate * x
    # Later, between down's backward and gate_up's weight gradient: the gradients of the routing
    # scatter (its (T, k, h) clone, and the zeros and index_put of the gather's backward, three
    # S*h), of the gate_up output (S*2I) and of act(gate)*up (S*I), the down output and
    # act(gate)*up freed: S*(2h + 2I)*x above the layer's saved set. It wins at long sequences
    # (tracer, OLMoE-1B-7B 2 layers, QLoRA all-linear with checkpointing, batch 4 x 2048: these
    # tensors at the backward peak, the plan 6.3% under without them)
    inputs = pairs * (2 * model.hidden_size + 2 * moe.intermediate) * x
    return max(down, inputs)


def moe_unkept_merge_backward(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Where the merged expert weight is not kept (:func:`experts_merged_unkept`), peft's merge
    backward: the merged weight's gradient (E*in*out in the weight's dtype) beside lora_B's
    (E x out x r, the matmul's and its scaled copy, in the stream's dtype), no saved set of the
    layer left to free. Tracer, DeepSeek-V3 cut to 2 layers, LoRA on the experts' down, batch
    1 x 512: two bf16 [256, 7168, 16] beside the [256, 7168, 2048] weight gradient at the backward
    peak. (Where the merged weight is kept, its release after the grouped matmul's backward
    outweighs lora_B's gradient: :func:`moe_backward_workspace`.) 0 otherwise."""
    if not experts_merged_unkept(model, train, prec):
        return 0
    by_part = {tg.part: tg for tg in targets.targeted_parameters(model, train)}
    first = by_part.get("down") or by_part.get("gate_up")
    return first.weight * parameter_bytes(train, prec) + 2 * first.experts * first.rank * first.out_features * prec.stream


def moe_forward_workspace(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A checkpointed layer's experts in its forward, with LoRA on them: the layer keeps nothing
    for backward, but while its experts run the merged weights W + s*B@A (both, the router's
    too, and the factors' copies: the "merged" part of :func:`moe_saved_parts`) exist, beside
    the gathered input, the down output, its product with the routing weights and the
    unpermuted result (4*S*h*x), the MoE's input and the residual sum it is added to (2*T*h*x)
    and the sort's int64 vectors (24*S). Tracer, GLM-4.5-Air 2 layers, LoRA all-linear with
    checkpointing, batch 2 x 512: both bf16 merged weights ([128, 2816, 4096], [128, 4096,
    1408]) and four [8192, 4096] at the forward peak, which the plan had 25% under without them.
    0 without checkpointing (the loss moment holds the merged weights as saved) or without LoRA
    on the experts."""
    if not train.gradient_checkpointing or model.layer.moe is None:
        return 0
    if not any(tg.part in ("gate_up", "down") for tg in targets.targeted_parameters(model, train)):
        return 0
    t, h, x = train.tokens, model.hidden_size, prec.stream
    pairs = t * model.layer.moe.top_k
    # the product with the routing weights and the unpermuted result take the wider of the two
    # dtypes (type promotion: DeepSeek-V3's fp32 routing weights without autocast; tracer,
    # DeepSeek-V3 cut to 2 layers, LoRA all-linear pure bf16 with checkpointing, batch 4 x 1920:
    # two fp32 [61440, 7168] at the forward peak, the plan 3% under without them)
    product = max(x, routing_weight_bytes(model, prec))
    return moe_saved_parts(model, train, prec)["merged"] + ((2 * pairs * (x + product)) + 2 * t * x) * h + 24 * pairs


def moe_recompute_locals(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing, what a layer's recomputation holds beyond its saved set and the
    gradient of its output while its grouped experts run again (transformers 5.23
    integrations/moe.py grouped_mm_experts_forward), S = T*k pairs, p = the routing product's
    bytes (the wider of the stream's and the routing weights'), n = the MoE input's
    (:func:`norm_output_bytes`):

    - the experts' Python locals that frozen experts do not keep: the gathered input (S*h*n,
      alive to the end of the experts) and, while down's grouped matmul forms its output,
      act(gate)*up (S*I*x) and down's gathered bias (S*h*x); trainable experts keep the first
      two (:func:`moe_saved_parts`);
    - at the unpermute that ends the experts, the routed output times the routing weights
      (S*h*p), and the reordered copy too where the recomputation goes on past it (S*h*p);
    - where the experts end the layer (no shared expert, no norm after the MLP), nothing the
      layer saves lies between them and its output: backward reaches the unpermute first, with
      the output's gradient already expanded to the pairs (S*h*p, the sum's gradient made
      contiguous) before that asks for the recomputation, which stops there.

    The larger of the two instants. Tracer, Phi-3.5-MoE 2 layers, QDoRA all-linear with
    checkpointing, batch 4 x 2048: at down's grouped matmul in the last layer's recomputation
    the fp32 [8192, 2, 4096] pair gradient, [16384, 4096] gathered input and [16384, 6400]
    act(gate)*up beside the saved set, the backward peak, which the plan had 3.1% under
    without them; Qwen1.5-MoE 2 layers (a shared expert, gated after the experts), QLoRA
    batch 2 x 1024: three fp32 [8192, 2048] at the unpermute, no pair gradient. 0 without
    checkpointing or grouped experts."""
    moe = model.layer.moe
    if not train.gradient_checkpointing or moe is None or moe.dispatch != "grouped":
        return 0
    h, x = model.hidden_size, prec.stream
    pairs = train.tokens * moe.top_k
    routed = pairs * h * max(x, routing_weight_bytes(model, prec))
    frozen = not experts_trained(model, train)
    gathered = pairs * h * norm_output_bytes(model, prec) if frozen else 0
    down = (pairs * moe.intermediate * x if frozen else 0) + (pairs * h * x if moe.expert_bias else 0)
    last = not moe.shared_intermediate and not model.layer.norms_at("mlp_out")
    return gathered + moe_pair_gradient(model, train, prec) + max(down, routed * (1 if last else 2))


def moe_pair_gradient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing, where grouped experts end the layer (no shared expert, no norm after
    the MLP), the layer output's gradient expanded to the T*k routed pairs, S*h*p (the sum's
    gradient made contiguous, p as in :func:`moe_recompute_locals`): made before backward asks
    for the recomputation, alive through all of it (tracer, gpt-oss-20b 2 layers, QLoRA with
    checkpointing, batch 1 x 4096: an fp32 [4096, 4, 2880] clone beside the recomputed
    attention's softmax). 0 otherwise."""
    moe = model.layer.moe
    if (not train.gradient_checkpointing or moe is None or moe.dispatch != "grouped" or moe.shared_intermediate
            or model.layer.norms_at("mlp_out")):
        return 0
    return train.tokens * moe.top_k * model.hidden_size * max(prec.stream, routing_weight_bytes(model, prec))


def moe_unpermute_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Without checkpointing, the end of a layer's grouped experts (transformers 5.23
    integrations/moe.py grouped_mm_experts_forward): the routed output times the routing
    weights and its reordered copy, 2*S*h*p (S = T*k pairs, p the product's bytes: the wider of
    the stream's and the routing weights'), beside the layer's saved set up to the experts.
    Tracer, DeepSeek-V3 cut to 2 layers, LoRA fp16 pure on 2 GPUs (FSDP), batch 4 x 1600: two
    fp32 [51200, 7168] at the forward peak (the all-gathered MoE layer beside them), which the
    plan had 2.9% under without them. 0 with checkpointing (:func:`moe_forward_workspace`,
    :func:`moe_recompute_locals`) or without grouped experts."""
    moe = model.layer.moe
    if train.gradient_checkpointing or moe is None or moe.dispatch != "grouped":
        return 0
    pairs, h = train.tokens * moe.top_k, model.hidden_size
    # frozen experts keep no gathered input, but it lives to the end of the experts (moe_recompute_locals)
    gathered = 0 if experts_trained(model, train) else pairs * h * norm_output_bytes(model, prec)
    return gathered + 2 * pairs * h * max(prec.stream, routing_weight_bytes(model, prec))


def routed_outputs_held(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Dense experts (every expert on every token) followed by a shared expert inside the MoE's
    own forward (Llama 4: Llama4TextMoe.forward, transformers 5.23, holds ``routed_in`` and
    ``routed_out`` in locals while ``shared_expert(hidden_states)`` runs): the scaled repeated
    input (R*h*x, x the stream's dtype) and the experts' output (R*h*m, m the matmul dtype as in
    :func:`dense_moe_saved_parts`), R = E*T rows; neither is saved for backward (frozen experts),
    both live through the shared expert's modules, in the forward and in a recomputation. Tracer,
    Llama-4-Scout cut to 4 layers, QDoRA bf16 autocast with checkpointing, batch 4 x 2048: an fp32
    [131072, 5120] product and a bf16 [16, 8192, 5120] matmul output at the shared down_proj's
    weight norm in the recomputation. 0 for other layers (grouped experts sum their T*k pairs
    back to T rows inside the experts' call)."""
    moe = model.layer.moe
    if (moe is None or moe.dispatch != "dense" or moe.shared_first or not moe.shared_intermediate
            or moe.shared_fused):
        return 0
    m = prec.compute if prec.autocast else prec.stream
    return train.tokens * moe.experts * model.hidden_size * (prec.stream + m)


def routed_gradient_copy(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing, where :func:`routed_outputs_held` applies: the gradient of the routed
    sum (``routed_out.reshape(E, T, h).sum(0)``) expanded back to E*T rows, which the reshape's
    backward must copy (an expanded tensor has no [E*T, h] view), R*h*m. Autograd runs those
    nodes first (made last in the forward), before the shared expert's backward asks for the
    recomputation, and the copy waits for the experts' down matmul's backward: in flight through
    the whole recomputation (tracer, the same Scout step: a bf16 [16, 8192, 5120] clone at the
    recomputation's peak). 0 otherwise."""
    if not train.gradient_checkpointing or not routed_outputs_held(model, train, prec):
        return 0
    moe = model.layer.moe
    m = prec.compute if prec.autocast else prec.stream
    return train.tokens * moe.experts * model.hidden_size * m


def saved_after_experts(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What a layer saves after its routed experts (the entries of :func:`layer_saved_sequence`
    after the MLP's, but the base Linears' inputs, which the earlier modules made): a shared
    expert run after them (Granite-4.0-H's shared_mlp) and Qwen2-MoE's gated shared output, not
    recomputed yet while the experts run again (tracer, Granite-4.0-H-Small 2 layers, QLoRA
    all-linear with checkpointing, batch 2 x 4096: the backward peak at the unpermute of
    :func:`moe_recompute_locals`, which the plan had 0.8% over with them, 0.3% under without).
    0 without experts."""
    if model.layer.moe is None:
        return 0
    return _saved_after(layer_saved_sequence(model, train, prec), {"mlp"}, none_found=0)


def saved_after_attention(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What a layer saves after its attention block (the entries of :func:`layer_saved_sequence`
    after the attention's, or a mixer's, but the base Linears' inputs, which the earlier modules
    made too): the norms after attention, the MLP's or the experts' saved set and what follows;
    freed by the layer's backward before it reaches the attention block. The whole saved set
    without an attention block."""
    names = {lin.name for lin in model.layer.by_role(*ATTENTION_ROLES)} | {"attention", "output_gate", "mixer"}
    return _saved_after(layer_saved_sequence(model, train, prec), names)


def _saved_after(seq: list, names: set, none_found: int | None = None) -> int:
    """The entries of a :func:`layer_saved_sequence` after the last one named in ``names``, but
    the base Linears' inputs (the earlier modules made them): the whole sequence where none is
    named, or ``none_found``."""
    ends = [i for i, (name, _) in enumerate(seq) if name in names]
    if not ends and none_found is not None:
        return none_found
    return sum(size for name, size in seq[ends[-1] + 1 if ends else 0:] if name != "linear_inputs")


def shared_freed_before_experts(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing, what the experts' own backward no longer has of the recomputed layer:
    the shared expert's saved set (:func:`saved_after_experts`), where the shared expert runs
    after dense experts inside the MoE's forward (:func:`routed_outputs_held`, Llama 4): its
    nodes are made after the experts', so autograd runs its backward first and frees that set
    (tracer, Llama-4-Scout cut to 4 layers, QDoRA bf16 pure on attention and the shared expert
    with checkpointing, batch 4 x 1408: no shared-expert tensor at the experts' backward peak;
    the plan 2.4% over with them, 0.03% under without). Kept where the experts train (full
    fine-tuning: Llama-4-Maverick cut to 4 layers, batch 4 x 2048, the plan 0.13% under
    without it, its experts' backward otherwise short by about that much) and for grouped
    experts (DeepSeek-V3, GLM-4.5, Kimi-K2 cut to 2 layers, LoRA autocast with checkpointing:
    up to 0.16% under without it), where the traced peaks hold as much as that set beyond what
    the experts' moment counts."""
    if not train.gradient_checkpointing or experts_trained(model, train) or not routed_outputs_held(model, train, prec):
        return 0
    return saved_after_experts(model, train, prec)


def linear_inputs_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Inputs the frozen or trainable base Linear layers keep, one layer.

    A Linear keeps its input only when its weight is trainable (full fine-tuning): the
    attention input (shared by q, k, v), the MLP input (shared by gate, up), the down_proj
    input (T*I*c). The o_proj input is the attention output, already kept by the kernel,
    except where that output has the (batch, heads, seq, dim) layout, so that transformers'
    ``transpose(1, 2).contiguous()`` before o_proj is a real copy, T*q_dim*c, that o_proj
    keeps: the eager path's matmul output (which keeps nothing else of it), and SDPA's where
    RoPE ends in torch.cat (Phi-3's partial-rotary code), since q then has that layout and the
    kernel's output takes q's (the tracer: 1.5 GiB, the whole 2.4% gap, on Phi-3-mini full,
    batch 4, seq 2048).
    With an fp32 residual stream under autocast (`mixed`), the norm outputs are fp32 and each
    Linear reading one casts it to the compute dtype itself and keeps its own copy: q, k and
    v three (tracer: three bf16 [4, 2048, 1024] input copies per layer), gate and up two.
    Frozen bases keep nothing beyond their weight.
    """
    if train.method != "full":
        return 0
    t, c = train.tokens, prec.compute
    moe = model.layer.moe is not None  # the MoE's input is counted in moe_saved
    layer = model.layer
    if prec.autocast and norm_output_bytes(model, prec) != c:
        readers = len(layer.by_role(*NORM_READER_ROLES))
    else:  # one attention input and one MLP input, shared; one for both in a parallel layer
        # (Gemma 4's dense MLP beside the experts reads its own norm's output); a hybrid's layer
        # only those of the blocks it has (tracer, Nemotron-H-8B cut to 3 layers, full bf16, batch
        # 1 x 8192: the Mamba-2 and attention layers keep one bf16 norm output, the MLP layer one
        # and its down_proj input; the plan 2.7% over with two and the MLP's in every layer)
        beside = moe and layer.moe.beside_dense
        mixer_in = bool(layer.by_role(*ATTENTION_INPUT_ROLES, *MIXER_INPUT_ROLES))
        mlp_in = bool(layer.by_role(*MLP_INPUT_ROLES)) and (not moe or beside)
        readers = 1 if (moe and not beside) or model.traits.placement == "parallel" else mixer_in + mlp_in
    mlp_inner = model.intermediate_size if layer.by_role("down") and not moe else 0
    o = model.layer.by_role("o")
    o_in = o[0].in_features if o else model.q_dim  # (MLA: heads x v dims; a layer without attention copies nothing)
    attention_output_copy = t * o_in * c if model.traits.rotary_concat or uses_eager(model, train) else 0
    if model.layer.deltanet is not None:  # out_proj's input, the gated norm's output (a new tensor)
        attention_output_copy = t * model.layer.deltanet.values * c
    if layer.by_role("ssm_out"):
        from planner.memory.mixers import runs_out_proj

        # the torch path's Mamba-2 out_proj keeps its input, the gated norm's output cast to c
        # (tracer, Nemotron-H-8B cut to 3 layers, full bf16, torch path, batch 1 x 2048); the fused
        # kernel runs out_proj inside itself and keeps zxbcdt instead (planner.memory.mixers)
        attention_output_copy += t * layer.by_role("ssm_out")[0].in_features * c if runs_out_proj(model, train) else 0
    # MLA's q_b / kv_b keep their inputs, the latent norms' outputs
    latents = sum(lin.in_features for lin in model.layer.by_role("q_b", "kv_b"))
    return t * (readers * model.hidden_size + mlp_inner + latents) * c + attention_output_copy


def shared_input_bytes(model: ModelSpec, train: TrainSpec, prec: Precision, lin: Linear) -> int:
    """The part of an adapter's input copy (its kind's ``saved``) that is another adapter's
    tensor: without autocast, peft's cast of an fp32 input to the fp32 adapter dtype is the
    input itself (``Tensor.to`` returns self), so the adapters reading one norm output (q, k, v
    the input norm's; gate, up the post-attention norm's) keep one T*in*4 tensor between them:
    the first targeted reader counts it, the others 0. Only with an fp32 hidden stream (QLoRA /
    QDoRA, or dtype fp32) and no dropout (dropout makes each module its own copy). Tracer, tiny
    Llama 2 layers, QLoRA pure bf16 on q_proj, v_proj: one fp32 norm output per layer where the
    plan had two.
    o_proj's input is likewise the attention output itself, already kept by the kernel
    (:func:`attention_core_saved`), when attention runs in fp32 (:attr:`Precision.attention`):
    SDPA's output is laid out (batch, seq, heads, dim), so transformers' transpose and reshape
    are views; not for eager attention or a RoPE ending in torch.cat, whose output layout makes
    a copy (:func:`linear_inputs_saved`). Tracer, tiny Llama QLoRA pure: no o_proj input beside
    the SDPA output."""
    if prec.autocast or prec.hidden != FP32 or train.lora_dropout > 0:
        return 0
    if lin.role == "o":
        copied = model.traits.rotary_concat or uses_eager(model, train)
        return 0 if copied or prec.attention != FP32 else train.tokens * lin.in_features * FP32
    if lin.role not in NORM_READER_ROLES:
        return 0
    group = ATTENTION_INPUT_ROLES if lin.role in ATTENTION_INPUT_ROLES else MLP_INPUT_ROLES
    if model.traits.placement == "parallel":  # attention and MLP read the one norm output
        group = NORM_READER_ROLES
    targeted = targets.targeted_names(model, train)
    readers = [other.name for other in model.layer.by_role(*group) if other.name in targeted]
    return 0 if not readers or readers[0] == lin.name else train.tokens * lin.in_features * FP32


@lru_cache(maxsize=256)
def layer_saved_sequence(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[tuple[str, int], ...]:
    """What one decoder layer keeps for backward, in the order its forward creates it:
    input norm, the q/k/v adapters, the qk-norms, attention, o_proj, the other norms, gate/up
    adapters, the MLP's activations, down_proj, and (full fine-tuning) the base Linear inputs. Its sum is
    :func:`layer_saved`; its prefixes say what exists when a per-module transient happens."""
    targeted = targets.targeted_names(model, train)
    layer = model.layer

    adapter = variant(train).adapter

    def adapters(*roles):
        return [(lin.name, adapter.saved(lin, train, prec) - shared_input_bytes(model, train, prec, lin))
                for lin in layer.by_role(*roles) if lin.name in targeted]

    def norms(*sites):
        return [("norm", norm_saved(model, train, prec, n)) for n in layer.norms_at(*sites)]

    seq = norms("attn_in")
    if layer.mixer is not None:  # a Mamba-2 or short-convolution layer (planner.memory.mixers)
        from planner.memory.mixers import mixer_saved, runs_out_proj

        seq += adapters(*MIXER_INPUT_ROLES)
        seq.append(("mixer", mixer_saved(model, train, prec)))
        seq += adapters(*(("ssm_out",) if runs_out_proj(model, train) else ()), "conv_out")
    elif layer.by_role(*ATTENTION_ROLES):
        seq += adapters(*ATTENTION_INPUT_ROLES)
        seq += norms("q_a", "kv_a")  # multi-head latent attention's latents, and their up-projections
        seq += adapters(*LATENT_ROLES)
        seq += norms("q", "k", "v")
        seq.append(("qk_l2_norm", qk_l2_norm_saved(model, train, prec) + attn_temperature_saved(model, train, prec)))
        seq.append(("attention", attention_core_saved(model, train, prec)))
        if layer.traits.output_gate:
            seq.append(("output_gate", output_gate_saved(model, train, prec)))
        seq += adapters("o", "delta_out")
    seq += norms("attn_out", "mlp_in")
    moe = layer.moe
    shared = []
    if moe is not None and moe.shared_intermediate and not moe.shared_fused:
        shared = adapters("shared_gate", "shared_up") + [("shared_expert", shared_expert_saved(model, train, prec))]
        shared += adapters("shared_down")
    if moe is not None and moe.shared_first:
        seq += shared
    if moe is not None and moe.shared_fused:  # Granite-4.0-H: the experts, then shared_mlp
        seq.append(("mlp", mlp_core_saved(model, train, prec)))
        seq += adapters("shared_gate_up")
        seq.append(("shared_expert", shared_expert_saved(model, train, prec)))
        seq += adapters("shared_down")
    elif moe is not None and moe.beside_dense:  # Gemma 4: the dense MLP, then the router and the experts
        seq += adapters(*MLP_INPUT_ROLES)
        seq.append(("dense_mlp", dense_mlp_saved(model, train, prec)))
        seq += adapters("down")
        seq.append(("norm", moe_input_norms_saved(model, train, prec)))
        seq += adapters("router")
        seq.append(("mlp", mlp_core_saved(model, train, prec)))
    elif moe is not None or layer.by_role(*MLP_INPUT_ROLES):
        seq += adapters(*MLP_INPUT_ROLES)
        seq.append(("mlp", mlp_core_saved(model, train, prec)))
        seq += adapters("down")
    if moe is not None and not moe.shared_first:  # Llama 4: after the routed experts
        seq += shared
    # the MLP output's norm (sandwich and post-norm layers) runs after the MLP: not made yet while
    # down_proj runs (tracer, EXAONE-4.0-32B cut to 4 layers, DoRA with checkpointing, batch 4 x
    # 2048: no fp32 post_feedforward_layernorm input at down_proj's weight norm in the recomputation)
    seq += norms("mlp_out")
    if moe is not None and moe.shared_scale:
        seq += adapters("shared_scale")
        seq.append(("shared_output", shared_output_saved(model, train, prec)))
    if layer.by_role("ple_gate"):
        seq += adapters("ple_gate")
        seq.append(("per_layer_input", per_layer_input_core_saved(model, train, prec)))
        seq += adapters("ple_proj")
        seq += norms("ple_out")
    seq.append(("linear_inputs", linear_inputs_saved(model, train, prec)))
    return tuple(seq)


def output_gate_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A gated attention's output gate (Qwen3-Next, Qwen3.5: ``attn * sigmoid(gate)``, the gate
    half of q_proj's output): the sigmoid's output, which the product keeps, T*q_dim in the
    Linear outputs' dtype (the attention output it multiplies is the kernel's, kept already;
    the product is o_proj's input, its adapter's or weight gradient's)."""
    return train.tokens * model.q_dim * prec.hidden


def layer_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Everything one decoder layer keeps for backward: norms, attention, MLP, base Linear
    inputs and adapters (the sum of :func:`layer_saved_sequence`)."""
    return sum(size for _, size in layer_saved_sequence(model, train, prec))


def model_level_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Saved tensors outside the decoder layers.

    RoPE cos and sin, computed once per forward for positions of shape (1, seq) and so
    broadcast over the batch, in the residual stream's dtype, kept by every layer's rotation:
    2*seq*rot*stream for rot rotated dims per head (head_dim, or partial_rotary_factor of it)
    (tracer: two [1, 2048, 128] tensors, bf16 for LoRA, fp32 for QLoRA); one pair per
    attention type where they differ (Gemma-3's local and global RoPE), fp32 where the
    rotary embedding returns fp32 (OLMo-2).
    The final norm (:func:`norm_saved`), and the lm_head input (T*h*c) where lm_head is
    trained (full fine-tuning, or lm_head in modules_to_save: tracer, tiny Llama LoRA, one
    bf16 T x h more at the start of backward).
    """
    rope = rope_saved(model, train, prec)
    final = norm_saved(model, train, prec)
    return rope + final + lm_head_input_saved(model, train, prec) + per_layer_inputs_saved(model, train, prec)


def lm_head_input_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A trained lm_head's input, kept for its weight gradient: T*h*c (part of
    :func:`model_level_saved`); 0 without a trained lm_head."""
    return train.tokens * model.hidden_size * prec.compute if targets.trains_lm_head(train) else 0


def rope_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """RoPE's cos and sin tables, kept by every layer's rotation (part of :func:`model_level_saved`):
    2*seq*rot*stream per attention type (fp32 where the rotary embedding returns fp32)."""
    traits = model.traits
    if traits.rope == "complex":  # Llama 4: one complex64 (1, seq, rot/2) table, seq*rot*4
        return train.seq_len * int(model.head_dim * traits.rotary_fraction) * FP32
    return 2 * train.seq_len * rope_widths(model) * (FP32 if traits.rope_fp32 else prec.stream)


def rope_widths(model: ModelSpec) -> int:
    """The rotated dims per head of every RoPE table, summed: rope_tables x head_dim x
    partial_rotary_factor; where the kinds have their own head_dim (Gemma 4), one table per
    attention type at its kind's head_dim (its proportional RoPE returns cos / sin as wide as
    the head: transformers 5.23 _compute_proportional_rope_parameters)."""
    if not any(k.head_dim for k in model.kinds):
        return model.traits.rope_tables * int(model.head_dim * model.traits.rotary_fraction)
    widths = {k.attention_type: k.head_dim or model.head_dim for k in model.kinds}
    return sum(int(w * model.traits.rotary_fraction) for w in widths.values())


def step_small_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """Small tensors live through the whole backward that no persistent term counts: the
    batch's int64 input ids (T*8) and the position ids the model makes (seq*8), RoPE's fp32
    inv_freq buffers (rot/2 each, the module's and its original_inv_freq copy) and the loss
    and its seed gradient (two fp32 scalars). Tracer, Phi-3-mini 2 layers full, 4 GPUs FSDP:
    a [3, 768] and a [768] int64 tensor, two [48] fp32 buffers and two fp32 scalars at the
    backward peak."""
    return (train.tokens + train.seq_len) * 8 + rope_widths(model) * FP32 + 2 * FP32


def sliding_mask_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Sliding-window layers once the sequence reaches the window: transformers then builds an
    explicit (batch, 1, seq, seq) mask, SDPA turns it into a c-byte additive bias per call and
    the kernel keeps it, and with a mask SDPA no longer takes grouped k / v natively, so k
    and v are repeated to all heads (repeat_kv): per sliding layer B*S*S*c + 2*T*(q_dim -
    kv_dim)*c more (transformers' masking_utils skips the mask only while kv_length <
    sliding_window; tracer, tiny Mistral with window 16 at seq 40: exactly these two terms).
    0 for eager attention, whose scores are counted whole (:func:`attention_core_saved`)."""
    if uses_eager(model, train):
        return 0
    s = train.seq_len

    def per_layer(view):  # a KV-shared layer repeats the keys and values it reads: all of it is new
        kept = 0 if view.traits.kv_shared else view.kv_dim
        repeated = 2 * train.tokens * (view.q_dim - kept) * prec.compute if copies_repeated_kv(view, prec) else 0
        return train.batch_size * s * s * prec.compute + repeated
    return sum(view.num_layers * per_layer(view) for view in model.by_kind()
               if view.traits.sliding_window and s >= view.traits.sliding_window)


def eager_masks(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The explicit (batch, 1, seq, seq) masks the eager path adds to the scores, in the residual
    stream's dtype, made once per forward: one per kind of attention among the layers (the
    causal mask, and the sliding-window one where some layers slide: gpt-oss, Gemma-2 build
    both, transformers' create_causal_mask and create_sliding_window_causal_mask). The forward
    holds them through the decoder loop; with checkpointing the checkpoints hold them until the
    end of backward. Tracer, tiny Llama asked for eager with checkpointing: 2*B*S^2 bf16,
    4*B*S^2 under QLoRA; gpt-oss-20b 2 layers, QLoRA with checkpointing, batch 1 x 8192: two
    fp32 [1, 1, 8192, 8192] masks at the peak (bf16 under LoRA)."""
    if not uses_eager(model, train):
        return 0
    kinds = {bool(view.traits.sliding_window) for view in model.by_kind()
             if view.layer.deltanet is None and view.layer.by_role("q", "qkv")}
    return len(kinds) * train.batch_size * train.seq_len * train.seq_len * prec.stream


def activations_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """All activations alive at the end of the forward.

    Without checkpointing: L * layer_saved + model_level_saved. With gradient checkpointing
    (Chen et al. 2016) each layer keeps only its input hidden states (T*h*c), and its full
    set is recomputed one layer at a time during backward (:func:`recompute_transient`).
    The input is in the residual stream's dtype (fp32 for 4-bit methods and `mixed`, see
    :func:`precision`).
    """
    if train.gradient_checkpointing:
        layers = checkpoint_inputs(model, train, prec)
        layers += eager_masks(model, train, prec)  # the checkpoints hold them until the end of backward
        layers += shared_kv_kept(model, train, prec)
        if model.traits.embedding_multiplier and checkpoint_input_leaf(model, train, prec):
            # the embedding output that requires grad (autograd's leaf) stays beside its scaled
            # copy, layer 0's input (tracer, Granite-3.3-8B 4 layers, LoRA with checkpointing:
            # one bf16 [4, 2048, 4096] more at the loss; QLoRA one fp32)
            layers += train.tokens * model.hidden_size * prec.stream
    else:
        layers = (sum(view.num_layers * layer_saved(view, train, prec) for view in model.by_kind())
                  - leading_unrecorded(model, train, prec)
                  + sliding_mask_saved(model, train, prec) + shared_kv_kept(model, train, prec))
    return layers + model_level_saved(model, train, prec)


def shared_kv_kept(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With gradient checkpointing, the keys and values a Gemma 4 model hands to its KV-shared
    layers: the last layer of each attention type before them stores its rotated k and normed v
    (transformers 5.23 Gemma4TextAttention, store_full_length_kv) in a dict the checkpointed
    layers keep for their recomputation, 2*T*kv_dim per attention type (its kind's kv_dim) in
    the projections' dtype (fp32 under QLoRA, whose k_proj returns the fp32 stream's dtype).
    Tracer, tiny Gemma 4 LoRA with checkpointing: layer 0's [2, 48, 2, 16] and layer 1's
    [2, 48, 1, 32] k and v alive through the step; E2B 10 layers QLoRA: fp32 [1, 2048, 1, 256]
    and [1, 2048, 1, 512] ones. Without checkpointing the dict is gone once the forward returns
    (the storing layer's kernel keeps what it keeps: :func:`attention_core_saved`). 0 without
    KV-shared layers."""
    if not train.gradient_checkpointing or not any(k.layer.traits.kv_shared for k in model.kinds):
        return 0
    stores = {view.kinds[0].attention_type: view.kv_dim for view in model.by_kind() if not view.traits.kv_shared}
    return sum(2 * train.tokens * kv * prec.hidden for kv in stores.values())


def first_targeted_layer(model: ModelSpec, train: TrainSpec) -> int:
    """The first decoder layer whose kind holds a targeted module or fused parameter: 0 but where
    the first kinds hold none (DeepSeek-V3's dense first layers under targets only their experts
    have: ``down_proj``, which peft rewrites to the experts' fused down; transformers 5.23
    DeepseekV3MLP's own down_proj is then left alone)."""
    if len(model.kinds) < 2 or not train.is_adapter:
        return 0
    held = [kind.indices[0] for view, kind in zip(model.by_kind(), model.kinds)
            if targets.targeted_names(view, train) or targets.targeted_parameters(view, train)]
    return min(held, default=0)


def leading_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the layers up to the first one holding a target (:func:`first_targeted_layer`) do
    not keep: with a frozen embedding and no checkpointing nothing before the first adapter needs
    a gradient, so the layers before it keep nothing at all, and that layer keeps what a first
    layer keeps (:func:`first_norm_unrecorded`, :func:`first_layer_unrecorded`, read at its
    kind). Tracer, DeepSeek-V3 cut to a dense and a MoE layer, LoRA on ``down_proj`` (the
    experts' fused down only), batch 1 x 512: no tensor of the dense layer nor of the MoE
    layer's attention, router or shared expert at the backward peak, and no merged down weight."""
    first = first_targeted_layer(model, train)
    view = model.kind_view(first) if first else model
    if first and (targets.trains_embedding(train) or train.gradient_checkpointing or train.modules_to_save):
        first, view = 0, model
    before = sum(layer_saved(model.kind_view(i), train, prec) for i in range(first))
    return before + first_norm_unrecorded(view, train, prec) + first_layer_unrecorded(view, train, prec)


def first_norm_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the first layer's input norm does not keep: autograd records an op only when an
    input needs a gradient, and with a frozen embedding and no checkpointing nothing before
    the first adapter does (enable_input_require_grads runs only with checkpointing), so the
    first norm keeps nothing (tracer: layer 0 has no fp32 norm input, every later layer one).
    Its :func:`norm_saved`, or 0 when the embedding output needs a gradient (full
    fine-tuning, embed_tokens in modules_to_save, or checkpointing) or the layer has no input
    norm (OLMo-2's post-norm layers: both norms read block outputs, which need gradients)."""
    if targets.trains_embedding(train) or train.gradient_checkpointing:
        return 0
    # nor do the first layer's q/k/v adapters keep dropout masks: their input needs no gradient
    adapter = variant(train).adapter
    dropout = sum(adapter.dropout_unrecorded(lin, train, prec)
                  for lin in targets.targeted_linears(model, train.target_modules) if lin.role in ATTENTION_INPUT_ROLES)
    return (norm_saved(model, train, prec) if model.layer.norms_at("attn_in") else 0) + dropout


def first_layer_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the rest of the first decoder layer does not keep when only some of its modules are
    targeted: with a frozen embedding and no checkpointing (:func:`first_norm_unrecorded`) a
    tensor there needs a gradient only downstream of a targeted module, and autograd saves an
    op's input only for the gradient of another input that needs one (torch's derivatives:
    matmul keeps ``a`` for ``b``'s gradient and ``b`` for ``a``'s). With q, k, v needing
    gradients as their modules (q, k, v or a fused qkv) are targeted:

    - eager attention (:func:`attention_core_saved`): the q-side matmul input (T*q_dim*c) only
      when k needs a gradient, the k-side one only when q does, v and the fp32 probabilities
      (and Gemma-2's tanh output) only when the scores do (q or k), the c-byte probabilities
      that multiply v only when v does (in an fp32 attention they are the fp32 ones, kept when
      anything does); a fused kernel (SDPA / flash) keeps all of it or, when none of q, k, v
      needs a gradient, nothing (o_proj's adapter then keeps the fp32 attention output itself,
      which :func:`shared_input_bytes` counted as the kernel's);
    - a qk-norm only when its projection is targeted;
    - when no attention module is (o_proj included), the attention block's output needs no
      gradient: the norms reading it or the residual sum (``attn_out``, ``mlp_in``) keep
      nothing, and of a gated MLP's gate output, up output and act(gate) (:func:`mlp_core_saved`)
      silu keeps the gate output only when gate is targeted, the product act(gate) * up its
      up factor then too and act(gate) only when up is (a mixture of experts is left whole);
    - a targeted module whose input needs no gradient keeps no dropout mask and no DoRA weight
      copy (its kind's ``dropout_unrecorded``): o_proj when none of q, k, v needs one, gate / up
      when no attention module is targeted, down_proj when neither they are.

    Tracer, Granite-3.3-8B 2 layers, QDoRA bf16 autocast, eager, k_proj and down_proj, batch 1 x
    1920: one bf16 [1, 32, 1920, 1920] probabilities copy and one bf16 [1, 32, 128, 1920] k
    copy, both layer 1's, where the plan kept them for both layers (the whole 5% over-plan);
    Llama-3.2-1B 2 layers, DoRA fp16 autocast on up_proj only: layer 0 keeps no SDPA tensor, no
    post-attention norm input, no gate or up output, only act(gate) (the whole 2.3%).
    0 when the embedding output needs a gradient, with checkpointing, and for full fine-tuning."""
    if targets.trains_embedding(train) or train.gradient_checkpointing or not train.is_adapter:
        return 0
    layer, t = model.layer, train.tokens
    roles = {lin.role for lin in layer.linears if lin.name in targets.targeted_names(model, train)}
    if layer.mixer is not None or not layer.by_role(*ATTENTION_ROLES):
        # a hybrid's first layer (a Mamba-2 or short-convolution mixer, or an MLP-only layer):
        # with its input projection targeted everything after it needs a gradient and is kept
        # (tracer, tiny LFM2 of two conv layers, LoRA: layer 0 keeps all but its input norm's);
        # otherwise planned as kept (a bound)
        return 0
    gq, gk, gv = (side & roles for side in (Q_SIDE, K_SIDE, V_SIDE))
    if layer.deltanet is not None:  # a Gated DeltaNet keeps all of its set once a projection of its input is adapted
        gq = gk = gv = roles & DELTA_INPUT_ROLES
    scores_grad = bool(gq or gk)
    out = sum(norm_saved(model, train, prec, n) for site, g in (("q", gq), ("k", gk)) if not g
              for n in layer.norms_at(site))
    if not (gq or gk or gv):
        # o_proj's adapter then keeps the fp32 attention output the kernel would have kept
        out += attention_core_saved(model, train, prec) - sum(
            shared_input_bytes(model, train, prec, lin) for lin in layer.by_role("o") if "o" in roles)
    elif uses_eager(model, train) and not model.traits.attention_sinks:
        c = prec.attention
        scores = train.batch_size * model.num_heads * train.seq_len * train.seq_len
        side = t * model.q_dim * c
        out += (0 if gk else side) + (0 if gq else side)
        if not scores_grad:
            out += side + (scores * c if model.eager_attention else 0)  # v, Gemma-2's tanh output
        if c == FP32:
            out += 0 if scores_grad or gv else scores * FP32
        else:
            out += (0 if scores_grad else scores * FP32) + (0 if gv else scores * c)
    # a targeted module whose input needs no gradient keeps no dropout mask nor weight copy
    # (q, k and v: first_norm_unrecorded)
    # (the MLP reads the attention block's output, unless the layer is parallel: Cohere's MLP reads
    # the input norm's output beside attention, which needs no gradient; tracer, Command-R7B 4
    # layers, QLoRA on v_proj, fp16 mixed, batch 2 x 768 on 2 GPUs (FSDP): layer 0 keeps no MLP
    # tensor, the plan 1.8% over with them)
    attention = bool(roles & ATTENTION_ROLES) and model.traits.placement != "parallel"
    no_grad_input = ({"o"} if not (gq or gk or gv) else set()) | (set() if attention else MLP_INPUT_ROLES | ROUTER_ROLES)
    if not (attention or roles & MLP_INPUT_ROLES):
        no_grad_input.add("down")
    adapter = variant(train).adapter
    out += sum(adapter.dropout_unrecorded(lin, train, prec) for lin in layer.linears
               if lin.role in no_grad_input and lin.role in roles)
    if attention:
        return out
    if layer.moe is not None and not layer.moe.beside_dense:
        return out + routed_experts_unrecorded(model, train, prec, roles)
    out += sum(norm_saved(model, train, prec, n) for n in layer.norms_at("attn_out", "mlp_in"))
    mlp = t * model.intermediate_size * prec.hidden
    if layer.by_role("gate", "up") and not layer.by_role("fc_in"):
        out += (0 if "gate" in roles else 2 * mlp) + (0 if "up" in roles else mlp)
    elif layer.by_role("gate_up") and "gate_up" not in roles:
        out += 3 * mlp  # a fused gate_up output (2I wide, both halves its storage) and act(gate)
    if layer.moe is not None:
        out += first_experts_unrecorded(model, train, prec, roles)
    return out


def routed_experts_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision, roles: set[str]) -> int:
    """:func:`first_layer_unrecorded`'s share of a MoE layer (grouped experts in place of the
    MLP) when no attention module is targeted: the MoE's input needs no gradient, so its norms
    and, untargeted, the router and the shared expert keep nothing; a LoRA-merged fused weight
    keeps no merged copy for its input's gradient (:func:`experts_merged_unkept`), and with down
    alone targeted the experts keep only act(gate)*up for its weight gradient, the routing weights
    for the down output's and the int64 indices: the gathered input, gate_up output, act(gate) and
    down output, S*(2h + 3I)*x, are not kept. Tracer, DeepSeek-V3 cut to 2 layers, LoRA on
    ``down_proj`` (the experts' down only), batch 1 x 512: layer 1 keeps [4096, 2048] act(gate)*up,
    the routing weights and the factors' copies only. Other MoE layouts are left whole (a bound)."""
    moe = model.layer.moe
    parts_targeted = {tg.part for tg in targets.targeted_parameters(model, train)}
    if not _experts_input_gradless(model, train, roles):
        return 0
    out = sum(norm_saved(model, train, prec, n) for n in model.layer.norms_at("attn_out", "mlp_in"))
    parts = moe_saved_parts(model, train, prec)
    out += parts["router"] + (0 if roles & SHARED_ROLES else shared_expert_saved(model, train, prec))
    if "gate_up" not in parts_targeted:
        out += train.tokens * moe.top_k * (2 * model.hidden_size + 3 * moe.intermediate) * prec.stream
    by_part = {tg.part: tg for tg in targets.targeted_parameters(model, train)}
    first = by_part.get("gate_up") or by_part.get("down")
    return out + first.weight * parameter_bytes(train, prec)  # its merged weight (experts_merged_unkept)


def experts_merged_unkept(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The LoRA-merged fused expert weight (peft's ParamWrapper, W + s*B@A) that the first
    targeted layer's grouped matmul does not keep, its input needing no gradient (torch's
    derivatives: a matmul keeps ``b`` only for ``a``'s gradient): the first fused part the experts
    run (gate_up, else down), in the weight's dtype, and with down alone targeted the gathered
    input and the down output (2*S*h*x); they still exist while the experts run (the forward's
    end of the experts, planner.memory.moments). 0 where the layer's MoE input
    needs a gradient (:func:`routed_experts_unrecorded`'s conditions)."""
    if targets.trains_embedding(train) or train.gradient_checkpointing or not train.is_adapter or model.layer.moe is None:
        return 0
    roles = {lin.role for lin in model.layer.linears if lin.name in targets.targeted_names(model, train)}
    if roles & ATTENTION_ROLES or not _experts_input_gradless(model, train, roles):
        return 0
    by_part = {tg.part: tg for tg in targets.targeted_parameters(model, train)}
    first = by_part.get("gate_up") or by_part.get("down")
    # with down alone targeted, the gathered input and the down output are not kept either, yet
    # live to the end of the experts (tracer: two bf16 [4096, 7168] beside the merged weight)
    locals_ = 0 if "gate_up" in by_part else 2 * train.tokens * model.layer.moe.top_k * model.hidden_size * prec.stream
    return first.weight * parameter_bytes(train, prec) + locals_


def _experts_input_gradless(model: ModelSpec, train: TrainSpec, roles: set[str]) -> bool:
    """Whether a MoE layer (grouped experts in place of the MLP, LoRA on their fused weights
    only) whose attention is untargeted reads an input that needs no gradient: no router nor
    MLP-input module targeted (the layout :func:`routed_experts_unrecorded` plans)."""
    moe = model.layer.moe
    parts = {tg.part for tg in targets.targeted_parameters(model, train)}
    return (moe.dispatch == "grouped" and not moe.beside_dense and moe.activation != "clamped_swiglu"
            and not roles & (ROUTER_ROLES | MLP_INPUT_ROLES) and bool(parts) and parts <= {"gate_up", "down"})


def first_experts_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision, roles: set[str]) -> int:
    """:func:`first_layer_unrecorded`'s share of Gemma 4's experts beside the dense MLP, when no
    attention module is targeted (the residual they read needs no gradient): the router's norm
    and pre_feedforward_layernorm_2 keep nothing (:func:`moe_input_norms_saved`), nor does the
    dense MLP output's norm unless one of its Linears is targeted. With router.proj targeted the
    routing weights need a gradient: of the experts (transformers' grouped_mm path) only the
    product with them keeps the down output, and the gather and un-permutation their int64
    indices; the gate_up output, act(gate), the gathered input's int64 index, the routing
    weights and the group offsets are not kept, S*(3I*x + 8 + w) + 4E. Without it the whole
    MoE branch keeps nothing (router, experts, the experts output's norm). Tracer, Gemma-4-26B-A4B
    cut to 2 layers, LoRA on router.proj, on gate_proj, on both (bf16 autocast, batch 1 x 1856)."""
    moe, t, x = model.layer.moe, train.tokens, prec.stream
    pairs = t * moe.top_k
    out_norm = norm_saved(model, train, prec, model.layer.norms_at("mlp_out")[0])
    out = moe_input_norms_saved(model, train, prec)
    out += 0 if roles & (MLP_INPUT_ROLES | {"down"}) else out_norm
    if "router" in roles:
        return out + pairs * (3 * moe.intermediate * x + 8 + routing_weight_bytes(model, prec)) + 4 * moe.experts
    parts = moe_saved_parts(model, train, prec)
    return out + parts["router"] + parts["experts"] + out_norm


def checkpoint_input_leaf(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing and a frozen embedding, transformers' enable_input_require_grads
    (also called by prepare_model_for_kbit_training) makes the embedding output a tensor that
    requires grad; backward fills its .grad, and both (2*T*h in the hidden dtype) live until
    the training loop drops the step's references, through optimizer.step() in a plain loop
    (tracer: Llama-3.1-8B QLoRA, batch 4, seq 2048: 0.25 GiB). 0 otherwise, and 0 when
    embed_tokens is in modules_to_save: its output is then no leaf and keeps no .grad."""
    if not (train.gradient_checkpointing and train.is_adapter) or targets.trains_embedding(train):
        return 0
    return 2 * train.tokens * model.hidden_size * prec.stream


def layer_output_roles(layer) -> tuple[str, ...]:
    """The roles of the Linear whose output ends a layer (its first module in backward): the MLP's
    down projection, or the shared expert's where the shared expert runs after the routed experts
    and adds to their sum unscaled (Granite-4.0-H: modeling_granitemoehybrid's decoder layer adds
    shared_mlp(x) to block_sparse_moe(x); Llama 4: Llama4TextMoe.forward adds the routed sum into
    shared_expert(x)). Where the routed experts come last, no Linear ends the layer."""
    moe = layer.moe
    if moe is not None and moe.shared_intermediate and (moe.shared_fused or not moe.shared_first) \
            and not moe.shared_scale:
        return ("down", "shared_down")
    return ("down",)


def recompute_incoming_grads(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gradients in flight while checkpointing recomputes a layer.

    Recomputation starts lazily, at the first backward node of the layer that needs one of its
    saved tensors; the gradients made before it are alive through it: the gradient of the
    layer's output (T*h in its dtype, :func:`layer_output_bytes`), and when DoRA targets down_proj, the last module,
    the fp32 gradients its output ops made before lora_B's backward asked for the
    recomputation: the magnitude scale's (T*h*4) and, when the hidden stream is 16-bit, the
    cast of the output back from fp32 (T*h*4 more). Tracer, Mistral-7B r8 all-linear, batch 4,
    seq 2048: DoRA one bf16 and two fp32 [4, 2048, 4096] gradients made before the
    recomputation and live at its peak; QDoRA (fp32 hidden stream) one fp32 fewer. With a
    16-bit hidden stream DoRA's output is the sum of the base layer's 16-bit output and its fp32
    DoRA term, so the gradient reaching the base output is cast back too: T*h*hidden more
    (tracer, the same Mistral DoRA step: a second bf16 [4, 2048, 4096] gradient). Granite scales
    each block's output by its residual multiplier before the residual sum, and that product's
    gradient (T*h*hidden) is made before the recomputation too (tracer, Granite-3.3-8B 2 layers,
    QDoRA autocast with checkpointing, batch 4, seq 2048: one fp32 [4, 2048, 4096] more than
    Mistral's, the plan 1.8% under without it).
    0 without checkpointing."""
    if not train.gradient_checkpointing:
        return 0
    t, h = train.tokens, model.hidden_size
    grads = t * h * layer_output_bytes(model, prec)
    if model.layer.norms_at("mlp_out"):
        # a norm after the MLP (sandwich and post-norm layers): its backward reads its saved input
        # first, so the recomputation starts before down_proj's output ops make any gradient
        # (tracer, EXAONE-4.0-32B cut to 4 layers, DoRA bf16 autocast with checkpointing, batch 4
        # x 2048: only the layer output's bf16 gradient in flight at down_proj's weight norm, the
        # plan 3.9% over with DoRA's four). A norm that multiplies in fp32 and casts its output
        # back (OLMo-2, Gemma) first makes the fp32 gradient of that cast (tracer, OLMo-3-7B cut
        # to 4 layers, DoRA bf16 autocast with checkpointing, batch 1 x 512: a bf16 and an fp32
        # [1, 512, 4096] gradient in flight)
        cast_back = model.traits.norm == "rms_fp32_out" and prec.stream != FP32
        return grads + (t * h * FP32 if cast_back else 0)
    last = layer_output_roles(model.layer)
    if train.is_dora and any(lin.role in last for lin in targets.targeted_linears(model, train.target_modules)):
        grads += t * h * FP32 * (1 if prec.hidden == FP32 else 2)
        grads += 0 if prec.hidden == FP32 else t * h * prec.hidden  # the base output's gradient, cast back
        if model.traits.residual_multiplier and prec.hidden == FP32:
            grads += t * h * FP32  # Granite: the MLP output's gradient, times the multiplier
    return grads + routed_gradient_copy(model, train, prec)


def experts_backward_incoming_grads(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gradients in flight at the routed experts' own backward, after the recomputation: the
    layer output's (T*h, :func:`layer_output_bytes`). A shared expert that ends the layer
    (:func:`layer_output_roles`, Llama 4) has run its backward by then, so its DoRA gradients
    (:func:`recompute_incoming_grads`) are spent. 0 without checkpointing."""
    if not train.gradient_checkpointing:
        return 0
    return train.tokens * model.hidden_size * layer_output_bytes(model, prec)


def embedding_backward_workspace(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A trainable embedding tied to lm_head (full fine-tuning): when the embedding's backward
    runs, lm_head's gradient of the same weight is already in .grad, and the embedding's own
    gradient and their sum exist beside it, 2*V*h*weight bytes above the gradients counted
    (tracer, Phi-4-mini full, 4 layers, 200k-token tied embedding: two bf16 V x h tensors
    above the end of backward; with untied weights, Llama-3.1-8B and Qwen2.5-7B, none).
    0 for adapters (the embedding is frozen) and untied embeddings."""
    if train.method != "full" or not model.tie_word_embeddings:
        return 0
    return 2 * model.vocab_size * model.hidden_size * prec.weight


def recompute_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With gradient checkpointing, one layer's saved set exists again during its backward."""
    return layer_saved(model, train, prec) if train.gradient_checkpointing else 0


def autocast_weight_copies(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Compute-dtype copies that autocast makes of fp32 weights, kept for backward.

    Under autocast a matmul with an fp32 weight runs on a c-byte copy of it, which the
    matmul keeps for the input gradient: adapter weights (adapter_params * c), and under
    `mixed` every Linear weight as well (:func:`mixed_linear_copies`). The lm_head's copy is
    :func:`lm_head_autocast_copy`. QLoRA / QDoRA under `mixed` copy no Linear weight: their
    decoder Linears are 4-bit, and bitsandbytes dequantizes them itself, outside autocast
    (tracer, OLMo-2-7B 2 layers, QDoRA mixed: no bf16 copy of a packed weight is live, the whole
    808 MB the plan kept in every phase).
    """
    if not prec.autocast:
        return 0
    copies = counts.adapter_params(model, train) if train.is_adapter else 0
    for view in model.by_kind():
        # LoRA on fused parameters copies its factors itself (moe_saved), outside autocast
        copies -= view.num_layers * sum(t.params for t in targets.targeted_parameters(view, train))
        if train.is_dora:  # the magnitude vectors are not matmul weights
            copies -= view.num_layers * sum(lin.out_features
                                            for lin in targets.targeted_linears(view, train.target_modules))
    if train.is_dora:  # and of the Linears outside the layers (Gemma 4's per_layer_model_projection)
        copies -= sum(lin.out_features for lin in targets.targeted_root_linears(model, train.target_modules))
    if train.method == "full" or not train.gradient_checkpointing:
        copies += mixed_linear_copies(model, train)
    return (copies - first_layer_uncopied(model, train, prec)) * prec.compute


def first_layer_uncopied(model: ModelSpec, train: TrainSpec, prec: Precision, backward: bool = False) -> int:
    """Elements of the autocast copies the first layer's attention-input Linears (q, k, v or
    qkv) do not keep: a matmul keeps its weight's copy only for its input's gradient, and
    with a frozen embedding and no checkpointing the first layer's attention input needs none
    (:func:`first_norm_unrecorded`): their base weights' copies under `mixed` (out*in each);
    in backward (``backward``) also their lora_A copies (r*in each, when targeted), which
    autocast's cache (trained leaves) holds until the forward's autocast exits. Tracer,
    Llama-3.2-1B 2 layers, LoRA mixed: three [2048, 2048], two [512, 2048] and nine, not
    twelve, [16, 2048] bf16 copies at the backward peak; at the loss all twelve lora_A
    copies. DoRA keeps its lora_A copies (its weight norm's B @ A keeps them). 0 when the
    embedding output needs a gradient."""
    if targets.trains_embedding(train) or train.gradient_checkpointing or not prec.autocast:
        return 0
    readers = model.layer.by_role(*ATTENTION_INPUT_ROLES)
    # DoRA's weight norm multiplies lora_B by lora_A, which keeps the same cached lora_A copy
    adapter = variant(train).adapter
    keeps_lora_a = adapter.trains_base or adapter.dora or not backward
    targeted = () if keeps_lora_a else targets.targeted_names(model, train)
    n = sum(lin.in_features * lin.out_features for lin in readers) if mixed_linear_copies(model, train) else 0
    return n + sum(train.rank * lin.in_features for lin in readers if lin.name in targeted)


def mixed_linear_copies(model: ModelSpec, train: TrainSpec) -> int:
    """Elements of the c-byte copies autocast makes of the decoder Linear weights under
    `mixed` (fp32 master weights), one per weight and matmul. torch's autocast caches only
    casts of leaf tensors that require grad, so a frozen weight's copy lives only as long as
    an op keeps it: without checkpointing the matmul keeps it for the input gradient (every
    layer's, to the layer's backward), with checkpointing the layer keeps nothing and only
    the layer being recomputed has them again (:func:`backward_autocast_copies`). A trained
    weight (full fine-tuning) is cached until the forward's autocast exits (tier 4 traces).
    Tracer, Qwen2.5-0.5B 2 layers, LoRA mixed with checkpointing, batch 1 x 512: no layer's
    bf16 weight copy at the loss, only lm_head's (the whole 59.6 MB over-plan). 0 for 4-bit
    Linears (bitsandbytes dequantizes them itself)."""
    if train.precision != "mixed" or variant(train).base.quantized:
        return 0
    # (none of a Linear under torch.no_grad: DeepSeek-V3.2's indexer keeps no copy for backward)
    return sum(t.elements for t in inv.base_tensors(model) if t.role in ("linear", "kept_linear") and t.grad)


def backward_autocast_copies(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The decoder layers' autocast copies (:func:`autocast_weight_copies`) still live in
    backward. Without checkpointing the matmuls kept them all. With it the layers kept nothing:
    the copies lived only in autocast's cache, which is emptied when the forward's autocast
    context exits, so in backward only the layer being recomputed has its copies again (one
    layer's share, the layers being alike). The tracer shows the difference as the whole
    3.7% over-plan of Qwen2.5-1.5B QDoRA r64 all-linear with checkpointing (0.137 GiB)."""
    copies = autocast_weight_copies(model, train, prec)
    if not train.gradient_checkpointing:
        return copies - (first_layer_uncopied(model, train, prec, backward=True)
                         - first_layer_uncopied(model, train, prec)) * prec.compute
    # the recomputed layer's matmuls keep its frozen weights' copies too (mixed_linear_copies)
    linear = mixed_linear_copies(model, train) * prec.compute if prec.autocast and train.method != "full" else 0
    return (copies + linear) // model.num_layers


def lm_head_autocast_copy(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The c-byte copy autocast makes of an fp32 lm_head (V*h*c), kept from the loss until
    lm_head's backward: under `mixed` precision, and for QLoRA / QDoRA, whose lm_head
    prepare_model_for_kbit_training casts to fp32 (the tracer shows this copy as the whole
    0.24 GiB gap an earlier formula left on Llama-2-7B QLoRA). It does not exist yet while
    the decoder layers run, nor after lm_head's backward."""
    if prec.autocast and (train.precision == "mixed" or train.is_quantized):
        return model.vocab_size * model.hidden_size * prec.compute
    return 0


def softcap_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Final-logit softcapping (Gemma-2: cap * tanh(logits / cap)) keeps tanh's output for
    backward, T*V in the logits' dtype (:func:`logits_forward`: the compute dtype under
    autocast, else lm_head's own, fp32 for QLoRA / QDoRA), from the loss until lm_head's
    backward; 0 for other models (tracer, Gemma-4-31B and 26B-A4B cut to 2 layers, QLoRA pure
    bf16, batch 1 x 1856: an fp32 [1, 1856, 262144] tanh output, the plan 6% under with a
    16-bit one)."""
    if not model.traits.logit_softcapping:
        return 0
    return train.tokens * model.vocab_size * (prec.compute if prec.autocast else parameter_bytes(train, prec))


def logits_forward(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Logits at the loss, end of forward: the lm_head output (T*V*c), its fp32 upcast for the
    loss (T*V*4, transformers' ForCausalLMLoss) and log_softmax's output kept for backward
    (T*V*4): T*V*(c + 8), plus :func:`softcap_saved`. With them the final norm's output, the
    lm_head's input, which the model's output object holds until the forward returns:
    T*h*stream (tracer: the final norm's bf16 [4, 2048, 4096] for LoRA, fp32 for QLoRA; the
    whole -2 and -4 bytes per token*hidden gap at the loss under checkpointing). A trained
    lm_head keeps its input anyway (:func:`model_level_saved`): not again for full
    fine-tuning, nor for a saved lm_head on a 16-bit stream, where that input is this same
    tensor (under QLoRA the kept input is autocast's 16-bit copy of the fp32 one: both).
    Without autocast the logits are in lm_head's own dtype l (:func:`parameter_bytes`: fp32 for
    QLoRA / QDoRA, whose lm_head prepare_model_for_kbit_training casts to fp32, and in fp32),
    and the loss's upcast of fp32 logits is the same tensor: T*V*(l + 4) then (tracer,
    SmolLM3-3B 2 layers, QLoRA pure: one fp32 [256, 128256] lm_head output and the log_softmax
    output at the loss)."""
    logit = prec.compute if prec.autocast else parameter_bytes(train, prec)
    upcast = FP32 if logit != FP32 else 0
    same_tensor = targets.trains_lm_head(train) and (train.method == "full" or prec.stream == prec.compute)
    final_hidden = 0 if same_tensor else train.tokens * model.hidden_size * prec.stream
    return (train.tokens * model.vocab_size * (logit + upcast + FP32) + softcap_saved(model, train, prec)
            + final_hidden)


def logits_backward(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Logits at the start of backward: the kept log_softmax output, the loss gradient
    w.r.t. it, and the gradient w.r.t. the logits, all fp32: T*V*12, plus
    :func:`softcap_saved`."""
    return train.tokens * model.vocab_size * 3 * FP32 + softcap_saved(model, train, prec)


def lm_head_backward(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[tuple[int, int, int], ...]:
    """A trained lm_head's backward (full fine-tuning, or lm_head in modules_to_save), one GPU,
    with every decoder activation still kept: the moments (weight gradients, logits-side
    gradients, lm_head's autocast copy) live beside them. The matmul runs in l bytes: the
    compute dtype under autocast, else the weight's own dtype w (fp32 for QLoRA / QDoRA's
    lm_head, whose input is then the fp32 stream).

    - lm_head's matmul backward: its weight gradient (V*h*l) and input gradient (T*h*l) beside
      the incoming logits gradient (T*V*l; the loss's fp32 tensors are freed by then) and,
      under autocast, the weight's c-byte copy it kept (V*h*c when w != l).
    - where w != l (an fp32 lm_head under autocast), the gradient's cast to the weight's dtype:
      V*h*(l + w), once the matmul's inputs are freed.

    Tracer, Qwen2.5-0.5B 2 layers, LoRA pure bf16, lm_head saved, batch 1 x 128: the bf16
    [151936, 896] weight gradient, the bf16 [1, 128, 151936] logits gradient and the bf16
    [128, 896] input gradient at the backward peak (the plan was 5.5% under without them);
    SmolLM3-3B QLoRA pure: fp32 [128256, 2048], [256, 128256] and [256, 2048]; Phi-3-mini QLoRA
    under autocast: the bf16 [32064, 3072] gradient and its fp32 cast. Empty without a
    trained lm_head, and on several GPUs (their gradient terms are planner.memory.sharding's)."""
    if not targets.trains_lm_head(train) or train.parallel:
        return ()
    v, h, t = model.vocab_size, model.hidden_size, train.tokens
    w = prec.weight if train.method == "full" else parameter_bytes(train, prec)
    lin = prec.compute if prec.autocast else w
    copy = v * h * prec.compute if prec.autocast and w != lin else 0
    moments = ((v * h * lin, t * (v + h) * lin, copy),)
    if w != lin:
        moments += ((v * h * (lin + w), t * h * lin, 0),)
    return moments


def lm_head_grad_kept(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """A trained lm_head's weight gradient (full fine-tuning, or lm_head in modules_to_save),
    made by backward's first matmul and kept through every decoder layer's backward after it:
    V*h in the parameter's dtype (as :func:`lm_head_backward` stores it; tied to the embedding,
    the same bytes wait in autograd's buffer for the embedding's share). Tracer,
    GLM-4.5-Air 2 layers, QLoRA bf16 autocast, lm_head saved, batch 2 x 576: the fp32
    [151552, 4096] gradient beside the last layer's experts backward, the backward peak (the
    plan 4.7% under without it). The caller keeps it to whole gradients (one GPU, DDP)."""
    if not targets.trains_lm_head(train):
        return 0
    w = prec.weight if train.method == "full" else parameter_bytes(train, prec)
    return model.vocab_size * model.hidden_size * w


# ---------------------------------------------------------------- per-layer transients

def dequant_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """QLoRA / QDoRA: bitsandbytes' training matmul dequantizes the whole 4-bit weight to the
    compute dtype, one layer at a time: the largest out*in*c (forward and again in backward)."""
    base = variant(train).base
    return max(base.dequant_transient(lin, prec, backward=True) for lin in model.linears)


# ---------------------------------------------------------------- runtime

# PyTorch's caching allocator keeps freed blocks in reserved segments (2 MiB for small
# blocks, 20 MiB and up for large ones) and cannot always reuse them for a larger request,
# so reserved memory exceeds allocated memory at the peak. 5% of the allocated peak is an
# assumption, not a measurement, until real GPU rows in data/probes/ calibrate it per GPU
# family (see the planner-accuracy work).
ALLOCATOR_PERCENT = 5


def allocator_reserve(peak_allocated: int, fraction: float | None = None) -> int:
    """Reserved beyond allocated at the peak: ceil(5% of the allocated peak) (an estimate), or
    ceil(fraction * allocated) with a fraction calibrated from GPU rows (planner.memory.calibration)."""
    if fraction is None:
        return ceil_div(peak_allocated * ALLOCATOR_PERCENT, 100)
    return math.ceil(peak_allocated * fraction)
