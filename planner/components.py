"""One function per memory component: integer bytes, a formula and its source each.

Every function is pure arithmetic over the specs. How the components combine into the
phases of a training step (and so into the peak) is in :mod:`planner.methods`.

Notation in the docstrings: T = batch * seq tokens, h = hidden size, I = intermediate
size, V = vocabulary, L = decoder layers, c = bytes of the compute dtype (2 for bf16/fp16),
r = LoRA rank, n = number of elements of a weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import counts
from .specs import DTYPE_BYTES, Linear, ModelSpec, TrainSpec

FP32 = 4
NF4_BLOCK = 64  # bitsandbytes blocksize for 4-bit weights (bnb_4bit default)
DQ_BLOCK = 256  # blocksize of the second (double) quantization of the absmax values
NF4_CODE_BYTES = 16 * FP32  # the 16-entry fp32 code table each 4-bit QuantState holds
DQ_CODE_BYTES = 256 * FP32  # the 256-entry fp32 8-bit code table each nested (double-quant) state holds
BNB8_BLOCK = 256  # bitsandbytes 8-bit optimizers quantize their states blockwise, 256 per block
BNB8_MIN_SIZE = 4096  # bitsandbytes keeps 32-bit states for tensors smaller than this (min_8bit_size)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Precision:
    """Resolved byte sizes of one plan: compute dtype, stored weights, trainable params."""

    compute: int  # activations and matmuls (bf16/fp16: 2, fp32: 4)
    weight: int  # stored base weights (fp32 master weights under `mixed`)
    autocast: bool  # the forward runs under torch.autocast
    hidden: int  # Linear outputs and the MLP between the matmuls
    stream: int  # the residual stream between the layers (embedding and norm outputs)


def precision(train: TrainSpec, dtype: str) -> Precision:
    """Byte sizes for a resolved dtype ("bf16", "fp16" or "fp32") and the precision scheme.

    Compute dtype, stored weights (fp32 master weights under `mixed`) and autocast come from
    the one precision rule, :func:`planner.precision.scheme`; bytes from DTYPE_BYTES.
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
    from .precision import scheme

    s = scheme(train, dtype)
    compute, weight = DTYPE_BYTES[s.compute], DTYPE_BYTES[s.weights]
    hidden = FP32 if train.is_quantized else compute
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
    if not train.is_quantized:
        return counts.total_params(model) * prec.weight
    packed = model.num_layers * sum(quantized_weight_bytes(lin.in_features * lin.out_features)
                                    for lin in model.linears)
    other = counts.total_params(model) - counts.linear_weight_params(model)
    return packed + other * FP32


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
        return blocks * FP32 + NF4_CODE_BYTES
    return blocks + ceil_div(blocks, DQ_BLOCK) * FP32 + FP32 + DQ_CODE_BYTES + NF4_CODE_BYTES


def weights_quant_state(model: ModelSpec, train: TrainSpec) -> int:
    """Quant states of every 4-bit decoder Linear (0 for unquantized methods)."""
    if not train.is_quantized:
        return 0
    per_layer = sum(quant_state_per_weight(lin.in_features * lin.out_features, train.double_quant)
                    for lin in model.linears)
    return model.num_layers * per_layer


# ---------------------------------------------------------------- trainable state

def adapter_bytes(model: ModelSpec, train: TrainSpec) -> int:
    """LoRA A, B (and DoRA magnitude) in fp32: 4 bytes per adapter parameter.

    peft keeps adapter weights in fp32 on a 16-bit base (LoraConfig / get_peft_model
    autocast_adapter_dtype=True, the default).
    """
    return counts.adapter_params(model, train) * FP32


def trainable_bytes_per_param(train: TrainSpec, prec: Precision) -> int:
    """Bytes of one trainable parameter: fp32 for adapters, the stored weight dtype for full."""
    return FP32 if train.is_adapter else prec.weight


def grads(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gradients of the trainable parameters, in the parameters' dtype: trainable * bytes."""
    return counts.trainable_params(model, train) * trainable_bytes_per_param(train, prec)


def _trainable_tensor_sizes(model: ModelSpec, train: TrainSpec) -> list[tuple[int, int]]:
    """(numel, count) of the trainable tensors, for optimizers that treat small tensors apart."""
    if train.is_adapter:
        sizes: list[tuple[int, int]] = []
        for lin in counts.targeted_linears(model, train.target_modules):
            sizes.append((train.rank * lin.in_features, model.num_layers))
            sizes.append((lin.out_features * train.rank, model.num_layers))
            if train.is_dora:
                sizes.append((lin.out_features, model.num_layers))
        return sizes
    sizes = [(counts.embedding_params(model), 1), (model.hidden_size, 1 + model.num_layers * model.norms_per_layer)]
    if counts.lm_head_params(model):
        sizes.append((counts.lm_head_params(model), 1))
    for lin in model.linears:
        sizes.append((lin.in_features * lin.out_features, model.num_layers))
        if lin.bias:
            sizes.append((lin.out_features, model.num_layers))
    return sizes


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
    return 2 * counts.trainable_params(model, train) * trainable_bytes_per_param(train, prec)


def _adamw_8bit_bytes(model: ModelSpec, train: TrainSpec) -> int:
    total = 0
    for numel, count in _trainable_tensor_sizes(model, train):
        if numel >= BNB8_MIN_SIZE:
            total += count * 2 * (numel + ceil_div(numel, BNB8_BLOCK) * FP32)
        else:
            total += count * 2 * numel * FP32
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
    one parameter-sized list, trainable * bytes. The fused kernel
    (`adamw_torch_fused`), bitsandbytes' optimizers and plain SGD update in place: 0.
    """
    if train.optim == "adamw_torch":
        return counts.trainable_params(model, train) * trainable_bytes_per_param(train, prec)
    return 0


# ---------------------------------------------------------------- activations

def norm_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What one RMSNorm keeps for backward, when a gradient flows through it.

    transformers' RMSNorm upcasts its input (x.to(float32): T*h*4, saved by pow and mul)
    and saves rsqrt(mean(x^2) + eps) (T*4). When the norm weight itself is trainable (full
    fine-tuning), the mul also saves the normalized input cast back to the input's dtype,
    the residual stream's (T*h*c; fp32 under `mixed`); Gemma's norm multiplies in fp32
    (x_norm * (1 + w.float())) and saves it as fp32 (T*h*4).
    """
    t, h = train.tokens, model.hidden_size
    saved = t * h * FP32 + t * FP32
    if train.method == "full":
        saved += t * h * (FP32 if model.norm_fp32_output else prec.stream)
    return saved


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
    """
    t, c = train.tokens, prec.compute
    saved = t * (2 * model.q_dim + 2 * model.kv_dim) * c
    if "qkv_proj" in model.linear_names and prec.hidden == c:
        # Fused qkv (Phi-3): v is a slice of the qkv output, so keeping v keeps the whole
        # T*(q_dim + 2*kv_dim) storage alive (the tracker counts storages, as the allocator does).
        # With an fp32 hidden stream (4-bit methods) SDPA keeps autocast copies instead.
        saved += t * (model.q_dim + model.kv_dim) * c
    lse = train.batch_size * model.num_heads * train.seq_len * FP32
    if not model.eager_attention:
        return saved + lse
    scores = train.batch_size * model.num_heads * train.seq_len * train.seq_len
    return 3 * t * model.q_dim * c + scores * (2 * c + FP32)


def mlp_core_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The gated MLP keeps gate and up outputs and act(gate) for backward: 3*T*I*c
    (fp32 hidden stream for 4-bit methods: 3*T*I*4, see :func:`precision`)."""
    return 3 * train.tokens * model.intermediate_size * prec.hidden


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
    if prec.autocast and prec.stream != c:
        readers = sum(1 for n in model.linear_names if n in ATTENTION_INPUTS + ("gate_proj", "up_proj", "gate_up_proj"))
    else:
        readers = 2  # one attention input and one MLP input, shared
    attention_output_copy = t * model.q_dim * c if model.rotary_concat or model.eager_attention else 0
    return t * (readers * model.hidden_size + model.intermediate_size) * c + attention_output_copy


def lora_input_bytes(train: TrainSpec, prec: Precision) -> int:
    """Bytes per element of the input copy each LoRA module keeps for its A gradient.

    peft casts the layer input to the adapter dtype (fp32) per module (`_cast_input_dtype`).
    Without autocast that fp32 copy is what lora_A keeps: 4 bytes. Under autocast, lora_A's
    matmul casts it back to the compute dtype and keeps that copy instead: c bytes.
    """
    return prec.compute if prec.autocast else FP32


def lora_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the adapters of one layer keep for backward.

    Per targeted Linear: its own copy of the input (T*in*e, e from
    :func:`lora_input_bytes`; q, k and v each make one of the same hidden states) and
    lora_A's output for lora_B's gradient (T*r*e). DoRA also keeps, for the magnitude's
    gradient, the base output and the LoRA output (T*out*e), both as products of its
    forward m/||W + s*BA|| * (...) (peft DoraLinearLayer.forward). The base output is in
    the dtype of the Linear's input: the hidden stream (:func:`precision`) for every Linear
    but o_proj, which reads the attention output (compute dtype).
    """
    if not train.is_adapter:
        return 0
    return sum(lora_saved_per_linear(lin, train, prec) for lin in counts.targeted_linears(model, train.target_modules))


def lora_saved_per_linear(lin: Linear, train: TrainSpec, prec: Precision) -> int:
    """One targeted Linear's share of :func:`lora_saved`."""
    t, e = train.tokens, lora_input_bytes(train, prec)
    saved = t * lin.in_features * e + t * train.rank * e
    if train.is_dora:
        base = prec.compute if lin.name == "o_proj" else prec.hidden
        saved += t * lin.out_features * (base + e)
    return saved


ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj", "qkv_proj")


def layer_saved_sequence(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[tuple[str, int]]:
    """What one decoder layer keeps for backward, in the order its forward creates it:
    input norm, the q/k/v adapters, attention, o_proj, the other norms, gate/up adapters, the
    MLP's activations, down_proj, and (full fine-tuning) the base Linear inputs. Its sum is
    :func:`layer_saved`; its prefixes say what exists when a per-module transient happens."""
    targeted = counts.targeted_names(model, train)
    by_name = {lin.name: lin for lin in model.linears}

    def adapters(names):
        return [(n, lora_saved_per_linear(by_name[n], train, prec)) for n in names if n in targeted]

    norm = norm_saved(model, train, prec)
    seq = [("norm", norm)]
    seq += adapters([n for n in model.linear_names if n in ATTENTION_INPUTS])
    seq.append(("attention", attention_core_saved(model, train, prec)))
    seq += adapters(["o_proj"])
    seq += [("norm", norm)] * (model.norms_per_layer - 1)
    seq += adapters([n for n in model.linear_names if n in ("gate_proj", "up_proj", "gate_up_proj")])
    seq.append(("mlp", mlp_core_saved(model, train, prec)))
    seq += adapters(["down_proj"])
    seq.append(("linear_inputs", linear_inputs_saved(model, train, prec)))
    return seq


def layer_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Everything one decoder layer keeps for backward: norms, attention, MLP, base Linear
    inputs and adapters (the sum of :func:`layer_saved_sequence`)."""
    return sum(size for _, size in layer_saved_sequence(model, train, prec))


def model_level_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Saved tensors outside the decoder layers.

    RoPE cos and sin, computed once per forward for positions of shape (1, seq) and so
    broadcast over the batch, in the residual stream's dtype, kept by every layer's rotation:
    2*seq*head_dim*stream (tracer: two [1, 2048, 128] tensors, bf16 for LoRA, fp32 for QLoRA).
    The final norm (:func:`norm_saved`), and for full fine-tuning the lm_head input (T*h*c).
    """
    t = train.tokens
    rope = 2 * train.seq_len * model.head_dim * prec.stream
    final = norm_saved(model, train, prec)
    head_input = t * model.hidden_size * prec.compute if train.method == "full" else 0
    return rope + final + head_input


def activations_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """All activations alive at the end of the forward.

    Without checkpointing: L * layer_saved + model_level_saved. With gradient checkpointing
    (Chen et al. 2016) each layer keeps only its input hidden states (T*h*c), and its full
    set is recomputed one layer at a time during backward (:func:`recompute_transient`).
    The input is in the residual stream's dtype (fp32 for 4-bit methods and `mixed`, see
    :func:`precision`).
    """
    if train.gradient_checkpointing:
        layers = model.num_layers * train.tokens * model.hidden_size * prec.stream
    else:
        layers = model.num_layers * layer_saved(model, train, prec) - first_norm_unrecorded(model, train, prec)
    return layers + model_level_saved(model, train, prec)


def first_norm_unrecorded(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What the first layer's input norm does not keep: autograd records an op only when an
    input needs a gradient, and with a frozen embedding and no checkpointing nothing before
    the first adapter does (enable_input_require_grads runs only with checkpointing), so the
    first norm keeps nothing (tracer: layer 0 has no fp32 norm input, every later layer one).
    Its :func:`norm_saved`, or 0 when the embedding output needs a gradient (full
    fine-tuning, or checkpointing)."""
    if train.method == "full" or train.gradient_checkpointing:
        return 0
    return norm_saved(model, train, prec)


def checkpoint_input_leaf(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing and a frozen embedding, transformers' enable_input_require_grads
    (also called by prepare_model_for_kbit_training) makes the embedding output a tensor that
    requires grad; backward fills its .grad, and both (2*T*h in the hidden dtype) live until
    the training loop drops the step's references, through optimizer.step() in a plain loop
    (tracer: Llama-3.1-8B QLoRA, batch 4, seq 2048: 0.25 GiB). 0 otherwise."""
    if not (train.gradient_checkpointing and train.is_adapter):
        return 0
    return 2 * train.tokens * model.hidden_size * prec.stream


def recompute_incoming_grads(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Gradients in flight while checkpointing recomputes a layer.

    Recomputation starts lazily, at the first backward node of the layer that needs one of its
    saved tensors; the gradients made before it are alive through it: the gradient of the
    layer's output (T*h in the residual stream's dtype), and when DoRA targets down_proj, the last module,
    the fp32 gradients its output ops made before lora_B's backward asked for the
    recomputation: the magnitude scale's (T*h*4) and, when the hidden stream is 16-bit, the
    cast of the output back from fp32 (T*h*4 more). Tracer, Mistral-7B r8 all-linear, batch 4,
    seq 2048: DoRA one bf16 and two fp32 [4, 2048, 4096] gradients made before the
    recomputation and live at its peak; QDoRA (fp32 hidden stream) one fp32 fewer.
    0 without checkpointing."""
    if not train.gradient_checkpointing:
        return 0
    t, h = train.tokens, model.hidden_size
    grads = t * h * prec.stream
    if train.is_dora and "down_proj" in counts.targeted_names(model, train):
        grads += t * h * FP32 * (1 if prec.hidden == FP32 else 2)
    return grads


def recompute_stop_extra(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What else is live when a checkpointed layer's recomputation stops, beside its whole
    saved set: non-reentrant checkpointing stops at the layer's last saved tensor (torch's
    checkpoint early stop), inside the last module, while the forward still references the
    layer's variables (:func:`layer_locals`), that module's input (with peft's fp32 cast) and,
    for an adapter module, its base output (peft runs the base layer first; lora_A's output is
    the last tensor saved). Tracer, toy Llama (512-token vocabulary) LoRA, batch 4, seq 2048:
    down_proj's input and fp32 cast, its base output and the post-attention norm output are
    live at the backward peak. 0 without checkpointing."""
    if not train.gradient_checkpointing:
        return 0
    last = model.linears[-1]
    targeted = last.name in counts.targeted_names(model, train)
    live = module_input_live(last, train, prec, targeted)
    base = train.tokens * last.out_features * prec.hidden if targeted else 0
    return live + layer_locals(model, train, prec, last.name) + base


def recompute_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With gradient checkpointing, one layer's saved set exists again during its backward."""
    return layer_saved(model, train, prec) if train.gradient_checkpointing else 0


def autocast_weight_copies(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Compute-dtype copies that autocast makes of fp32 weights, kept for backward.

    Under autocast a matmul with an fp32 weight runs on a c-byte copy of it, which the
    matmul keeps for the input gradient: adapter weights (adapter_params * c), and under
    `mixed` every Linear weight as well. The lm_head's copy is :func:`lm_head_autocast_copy`.
    """
    if not prec.autocast:
        return 0
    copies = counts.adapter_params(model, train) if train.is_adapter else 0
    if train.is_dora:  # the magnitude vectors are not matmul weights
        copies -= model.num_layers * sum(lin.out_features
                                         for lin in counts.targeted_linears(model, train.target_modules))
    if train.precision == "mixed":
        copies += counts.linear_weight_params(model)
    return copies * prec.compute


def backward_autocast_copies(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """The decoder layers' autocast copies (:func:`autocast_weight_copies`) still live in
    backward. Without checkpointing the matmuls kept them all. With it the layers kept nothing:
    the copies lived only in autocast's cache, which is emptied when the forward's autocast
    context exits, so in backward only the layer being recomputed has its copies again (one
    layer's share, the layers being alike). The tracer shows the difference as the whole
    3.7% over-plan of Qwen2.5-1.5B QDoRA r64 all-linear with checkpointing (0.137 GiB)."""
    copies = autocast_weight_copies(model, train, prec)
    return copies // model.num_layers if train.gradient_checkpointing else copies


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
    backward, T*V*c, from the loss until lm_head's backward; 0 for other models."""
    return train.tokens * model.vocab_size * prec.compute if model.logit_softcapping else 0


def logits_forward(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Logits at the loss, end of forward: the lm_head output (T*V*c), its fp32 upcast for the
    loss (T*V*4, transformers' ForCausalLMLoss) and log_softmax's output kept for backward
    (T*V*4): T*V*(c + 8), plus :func:`softcap_saved`. With them the final norm's output, the
    lm_head's input, which the model's output object holds until the forward returns:
    T*h*stream (tracer: the final norm's bf16 [4, 2048, 4096] for LoRA, fp32 for QLoRA; the
    whole -2 and -4 bytes per token*hidden gap at the loss under checkpointing). Full
    fine-tuning's lm_head keeps that input anyway (:func:`model_level_saved`): not again."""
    final_hidden = 0 if train.method == "full" else train.tokens * model.hidden_size * prec.stream
    return (train.tokens * model.vocab_size * (prec.compute + 2 * FP32) + softcap_saved(model, train, prec)
            + final_hidden)


def logits_backward(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """Logits at the start of backward: the kept log_softmax output, the loss gradient
    w.r.t. it, and the gradient w.r.t. the logits, all fp32: T*V*12, plus
    :func:`softcap_saved`."""
    return train.tokens * model.vocab_size * 3 * FP32 + softcap_saved(model, train, prec)


# ---------------------------------------------------------------- per-layer transients

def dora_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """The worst moment of a DoRA layer's backward: (what the layer still keeps, workspace).

    peft's DoRA output (m/||W + s*BA|| - 1) * base + m/||W + s*BA|| * lora * s multiplies by
    an fp32 scale, so its backward makes fp32 gradients the size of the module's output: the
    incoming one and those for the base and LoRA results, 3*T*out*4 (tracer: three
    [4, 2048, 16384] fp32 tensors at Phi-3's gate_up_proj). By then the layer's later modules
    have been through backward: it still keeps what came up to and including this module.
    With checkpointing, the recomputed module's input, its fp32 cast and the two dense fp32
    weight casts of its norm computation are still alive there too (tracer, Phi-3 gate_up:
    two [16384, 3072] fp32 tensors and four [4, 2048, 3072] fp32 ones): T*in*(hidden + 4) +
    2*out*in*4 more. (0, 0) without DoRA.
    """
    if not train.is_dora:
        return 0, 0
    seq = layer_saved_sequence(model, train, prec)
    best = (0, 0)
    for lin in counts.targeted_linears(model, train.target_modules):
        kept = saved_before(seq, lin.name) + lora_saved_per_linear(lin, train, prec)
        workspace = 3 * train.tokens * lin.out_features * FP32
        if train.gradient_checkpointing:
            workspace += module_input_live(lin, train, prec) + 2 * lin.out_features * lin.in_features * FP32
        if kept + workspace > sum(best):
            best = (kept, workspace)
    return best


def dequant_transient(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """QLoRA / QDoRA: bitsandbytes' training matmul dequantizes the whole 4-bit weight to the
    compute dtype, one layer at a time: the largest out*in*c (forward and again in backward)."""
    if not train.is_quantized:
        return 0
    return max(lin.in_features * lin.out_features for lin in model.linears) * prec.compute


def dora_transient_per_linear(lin: Linear, train: TrainSpec, prec: Precision) -> int:
    """peft's DoRA forward materializes dense matrices to compute ||W + s*B@A|| per row.

    get_lora_weight runs lora_B(lora_A(eye(in))): lora_A keeps its input for A's gradient
    while the product lives, the fp32 identity itself (in*in*4) or, under autocast, the
    c-byte copy autocast made of it (the fp32 one is then freed: the tracer shows one
    11008 x 11008 bf16 identity live at Llama-2-7B's DoRA peak). Then four dense out*in
    fp32 tensors coexist: the LoRA product cast to the input dtype, the (dequantized) base
    weight cast to fp32, s*(B@A) and their sum (peft DoraLinearLayer). The larger of the two
    moments counts.
    """
    n_in, n_out = lin.in_features, lin.out_features
    eye = n_in * n_in * (prec.compute if prec.autocast else FP32)
    at_norm = eye + 4 * n_out * n_in * FP32
    if not prec.autocast:
        return at_norm
    # Under autocast the product itself is a moment too: the fp32 identity, its c-byte copy
    # and lora_B's c-byte output (in*out) live together. When in >> out (Qwen2.5-7B's
    # 18944 -> 3584 down_proj) this moment is the larger one (tracer: 1.337 GiB fp32 identity
    # and 0.668 GiB bf16 copy live at the peak).
    at_product = n_in * n_in * FP32 + eye + n_in * n_out * prec.compute
    return max(at_norm, at_product)


def module_input_live(lin: Linear, train: TrainSpec, prec: Precision, targeted: bool = True) -> int:
    """A module's input while it runs, with peft's fp32 cast of it for the adapter of a
    ``targeted`` module (_cast_input_dtype; no copy when the hidden stream is already fp32):
    T*in*(hidden [+ 4])."""
    cast = FP32 if targeted and prec.hidden != FP32 else 0
    return train.tokens * lin.in_features * (prec.hidden + cast)


def saved_before(seq: list[tuple[str, int]], name: str) -> int:
    """What a layer has kept when module ``name`` starts: the sum of the earlier entries of
    :func:`layer_saved_sequence`."""
    total = 0
    for entry, size in seq:
        if entry == name:
            break
        total += size
    return total


def layer_locals(model: ModelSpec, train: TrainSpec, prec: Precision, name: str) -> int:
    """What a decoder layer's forward holds in Python variables while module ``name`` runs,
    beyond what autograd keeps (transformers' decoder-layer and model forward):

    - the layer's input, which the model's decoder loop and the attention's residual hold
      through the whole layer, and during the MLP the attention block's sum (T*h each, in the
      stream's dtype), unless something keeps them already: checkpointing (the layer's input),
      or a norm whose fp32 "copy" is the fp32 tensor itself;
    - the norm output passed to the block while o_proj / down_proj run (T*h*stream; for the
      other modules it is their input, :func:`module_input_live`);
    - with checkpointing, act(gate) while up_proj runs (T*I*hidden; without it the MLP keeps it);
    - without checkpointing, the embedding output (``inputs_embeds``, T*h*stream), which the
      model's forward holds through the decoder loop; with it, it is layer 0's kept input.

    Tracer, toy Llama with a 512-token vocabulary, LoRA, batch 4, seq 2048: at the last
    layer's down_proj, its input, the attention sum, the post-attention norm output and the
    embedding output are live besides the saved set.
    """
    t, h, s = train.tokens, model.hidden_size, prec.stream
    gc = train.gradient_checkpointing
    in_attention = name in ATTENTION_INPUTS or name == "o_proj"
    total = 0 if gc else t * h * s  # inputs_embeds
    if not gc and s != FP32:
        total += t * h * s  # the layer's input (the input norm kept an fp32 copy, not it)
    if not in_attention and (gc or s != FP32):
        total += t * h * s  # the attention block's sum
    if name in ("o_proj", "down_proj"):
        total += t * h * s
    if gc and name == "up_proj":
        total += t * model.intermediate_size * prec.hidden
    return total


def module_working_set(lin: Linear, train: TrainSpec, prec: Precision, targeted: bool) -> int:
    """The outputs a Linear is forming while it runs: its base output (T*out*hidden), and for a
    LoRA module lora_B's output and its scaled copy (T*out*e each, e from
    :func:`lora_input_bytes`), or the scaled copy and the sum: T*out*max(hidden + 2e, 2*hidden + e);
    for a DoRA module its magnitude-scaled combination (below).
    Tracer: at the toy Llama's last down_proj, the base output, lora_B's output and the scaled
    one are live together."""
    t, out = train.tokens, lin.out_features
    if not targeted:
        return t * out * prec.hidden
    e = lora_input_bytes(train, prec)
    if train.is_dora:
        # DoRA combines base and LoRA outputs with its fp32 magnitude scale: three fp32
        # T*out temporaries beside the base output and lora_B's, while the two dense fp32
        # casts of its norm computation are still referenced (tracer, toy Llama DoRA with
        # checkpointing, up_proj: three fp32 [4, 2048, 3584] products, two fp32 [3584, 1024]).
        return t * out * (prec.hidden + e + 3 * FP32) + 2 * out * lin.in_features * FP32
    return t * out * max(prec.hidden + 2 * e, 2 * prec.hidden + e)


@dataclass(frozen=True)
class LayerMoment:
    """The worst moment inside one layer's forward, in parts (bytes)."""

    live: int = 0  # the module's input and peft's fp32 cast of it
    before: int = 0  # what the layer has kept so far (none in a checkpointed forward)
    locals: int = 0  # :func:`layer_locals`
    working: int = 0  # :func:`module_working_set`, when neither transient below is running
    dequant: int = 0  # the dense weight of a 4-bit matmul
    dora: int = 0  # DoRA's weight-norm computation

    @property
    def total(self) -> int:
        return self.live + self.before + self.locals + self.working + self.dequant + self.dora


def layer_transient(model: ModelSpec, train: TrainSpec, prec: Precision, recompute: bool = False) -> LayerMoment:
    """The worst moment inside one layer's forward (``recompute``: its recomputation in
    backward under checkpointing), over its modules.

    At each module the layer has kept what its forward created before that module
    (:func:`layer_saved_sequence`; nothing in a checkpointed forward, all of it when
    recomputing for backward), holds its locals
    (:func:`layer_locals`) and the module's input, with peft's fp32 cast of it for the adapter
    (_cast_input_dtype), which lives through the whole DoRA forward: T*in*(hidden [+ 4]).
    The module is then at one of its moments: forming its outputs (:func:`module_working_set`),
    a 4-bit matmul's dense weight (QLoRA / QDoRA), or DoRA's norm computation. QDoRA casts the
    dequantized weight to fp32 before the norm computation and drops it, so the two never
    coexist: the larger counts.
    In a recomputation the worst moment comes once the module's backward has begun, with the
    gradients of the module's input beside the recomputed set; that backward working set is
    not modelled here: the recomputation counts only the transients (dequant, DoRA) and no
    locals or working set (tracer: Mistral-7B QLoRA's peak at down_proj's backward holds
    three fp32 [4, 2048, 14336] input gradients).
    """
    seq = layer_saved_sequence(model, train, prec)
    targeted = counts.targeted_names(model, train)
    keeps = recompute or not train.gradient_checkpointing
    best = LayerMoment()
    for lin in model.linears:
        is_target = lin.name in targeted
        context = dict(live=module_input_live(lin, train, prec, is_target),
                       before=saved_before(seq, lin.name) if keeps else 0,
                       locals=0 if recompute else layer_locals(model, train, prec, lin.name))
        dequant = lin.in_features * lin.out_features * prec.compute if train.is_quantized else 0
        dora = dora_transient_per_linear(lin, train, prec) if train.is_dora and is_target else 0
        moments = []
        if not recompute:
            # While lora_B runs, lora_A has kept its input copy and output (unless checkpointing
            # drops them); DoRA's kept base and LoRA outputs are the working set's own
            own = 0
            if keeps and is_target:
                own = (train.tokens * (lin.in_features + train.rank) * lora_input_bytes(train, prec)
                       if train.is_dora else lora_saved_per_linear(lin, train, prec))
            moments.append(LayerMoment(**{**context, "before": context["before"] + own},
                                       working=module_working_set(lin, train, prec, is_target)))
        if dequant > dora:
            moments.append(LayerMoment(**context, dequant=dequant))
        elif dora:
            moments.append(LayerMoment(**context, dora=dora))
        for m in moments:
            if m.total > best.total:
                best = m
    return best


# ---------------------------------------------------------------- runtime

# PyTorch's caching allocator keeps freed blocks in reserved segments (2 MiB for small
# blocks, 20 MiB and up for large ones) and cannot always reuse them for a larger request,
# so reserved memory exceeds allocated memory at the peak. 5% of the allocated peak is an
# assumption, not a measurement, until real GPU rows in data/probes/ calibrate it per GPU
# family (see the planner-accuracy work).
ALLOCATOR_PERCENT = 5


def allocator_reserve(peak_allocated: int, fraction: float | None = None) -> int:
    """Reserved beyond allocated at the peak: ceil(5% of the allocated peak) (an estimate), or
    ceil(fraction * allocated) with a fraction calibrated from GPU rows (planner.calibration)."""
    if fraction is None:
        return ceil_div(peak_allocated * ALLOCATOR_PERCENT, 100)
    return math.ceil(peak_allocated * fraction)
