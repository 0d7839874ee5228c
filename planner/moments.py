"""The worst moments inside a decoder layer: what is live while one module runs.

The phase model (:mod:`planner.methods`) takes the largest of these beside the step's
persistent state; each function here is one formula for one kind of moment, read off the
exact tracer (``probe --device fake``), and reads module roles (planner.architectures),
never module names.

Notation as in :mod:`planner.components`: T = batch * seq tokens, h = hidden size,
I = intermediate size, c = bytes of the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import counts, targets
from .architectures import ATTENTION_ROLES, Linear
from .components import (FP32, Precision, attention_core_saved, layer_saved_sequence, lora_input_bytes,
                         lora_saved_per_linear, uses_eager)
from .specs import ModelSpec, TrainSpec


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
    targeted = last.name in targets.targeted_names(model, train)
    live = module_input_live(last, train, prec, targeted)
    base = train.tokens * last.out_features * prec.hidden if targeted else 0
    return live + layer_locals(model, train, prec, last) + base


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
    for lin in targets.targeted_linears(model, train.target_modules):
        kept = saved_before(seq, lin.name) + lora_saved_per_linear(lin, train, prec)
        workspace = 3 * train.tokens * lin.out_features * FP32
        if train.gradient_checkpointing:
            workspace += module_input_live(lin, train, prec) + 2 * lin.out_features * lin.in_features * FP32
        if kept + workspace > sum(best):
            best = (kept, workspace)
    return best


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


def layer_locals(model: ModelSpec, train: TrainSpec, prec: Precision, lin: Linear) -> int:
    """What a decoder layer's forward holds in Python variables while module ``name`` runs,
    beyond what autograd keeps (transformers' decoder-layer and model forward), by the module's role:

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
    role = lin.role
    in_attention = role in ATTENTION_ROLES
    total = 0 if gc else t * h * s  # inputs_embeds
    if not gc and s != FP32:
        total += t * h * s  # the layer's input (the input norm kept an fp32 copy, not it)
    if not in_attention and (gc or s != FP32):
        total += t * h * s  # the attention block's sum
    if role in ("o", "down"):
        total += t * h * s
    if gc and role == "up":
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
    targeted = targets.targeted_names(model, train)
    keeps = recompute or not train.gradient_checkpointing
    best, best_total = (), 0  # the parts (live, before, locals, working, dequant, dora) of the worst moment
    for lin in model.linears:
        is_target = lin.name in targeted
        live = module_input_live(lin, train, prec, is_target)
        before = saved_before(seq, lin.name) if keeps else 0
        local = 0 if recompute else layer_locals(model, train, prec, lin)
        dequant = lin.in_features * lin.out_features * prec.compute if train.is_quantized else 0
        dora = dora_transient_per_linear(lin, train, prec) if train.is_dora and is_target else 0
        context = live + before + local
        if not recompute:
            # While lora_B runs, lora_A has kept its input copy and output (unless checkpointing
            # drops them); DoRA's kept base and LoRA outputs are the working set's own
            own = 0
            if keeps and is_target:
                own = (train.tokens * (lin.in_features + train.rank) * lora_input_bytes(train, prec)
                       if train.is_dora else lora_saved_per_linear(lin, train, prec))
            working = module_working_set(lin, train, prec, is_target)
            if context + own + working > best_total:
                best, best_total = (live, before + own, local, working, 0, 0), context + own + working
        if dequant > dora and context + dequant > best_total:
            best, best_total = (live, before, local, 0, dequant, 0), context + dequant
        elif dora >= dequant and dora and context + dora > best_total:
            best, best_total = (live, before, local, 0, 0, dora), context + dora
    return LayerMoment(*best)


def eager_scores(model: ModelSpec, train: TrainSpec) -> int:
    """batch * heads * seq * seq: the number of attention scores of one layer whose softmax
    runs eagerly; 0 for SDPA / flash and for attention with sinks (gpt-oss's own path,
    :func:`attention_core_saved`)."""
    if not uses_eager(model, train) or model.traits.attention_sinks:
        return 0
    return train.batch_size * model.num_heads * train.seq_len * train.seq_len


def eager_forward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> LayerMoment:
    """Eager attention's softmax in a layer's forward (transformers' eager_attention_forward,
    ``softmax(scores + mask, dtype=float32)``): the masked scores (c bytes each), softmax's
    fp32 upcast of them and its fp32 output, (c + 8) bytes per score, beside q and the
    repeated k and v the matmuls use (the non-score part of :func:`attention_core_saved`),
    what the layer has kept before attention and its locals. Tracer, tiny Llama asked for
    eager with checkpointing, batch 1, seq 1024: the bf16 sum, the fp32 copy and the fp32
    softmax, 10 bytes per score, at the forward peak. A zero moment where
    :func:`eager_scores` is 0."""
    scores = eager_scores(model, train)
    if not scores:
        return LayerMoment()
    keeps = not train.gradient_checkpointing
    seq = layer_saved_sequence(model, train, prec)
    q = model.layer.by_role("q", "qkv")[0]
    return LayerMoment(live=attention_core_saved(model, train, prec) - scores * (prec.compute + FP32),
                       before=saved_before(seq, "attention") if keeps else 0,
                       locals=layer_locals(model, train, prec, q),
                       working=scores * (prec.compute + 2 * FP32))


def eager_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """Eager attention's softmax backward: (what the layer still keeps, workspace). The layer
    keeps what came before attention and attention's own saved set but the c-byte
    probabilities (freed once the probabilities-times-v matmul's backward is done); the
    workspace is the fp32 gradient of the probabilities (the backward of their cast to c
    bytes) and softmax's fp32 input gradient, 8 bytes per score (tracer, tiny Llama asked for
    eager with checkpointing, batch 1, seq 1024: the recomputed fp32 softmax and these two
    fp32 gradients, 12 bytes per score, at the backward peak). (0, 0) where
    :func:`eager_scores` is 0."""
    scores = eager_scores(model, train)
    if not scores:
        return 0, 0
    seq = layer_saved_sequence(model, train, prec)
    kept = saved_before(seq, "attention") + attention_core_saved(model, train, prec) - scores * prec.compute
    return kept, 2 * scores * FP32
