"""The worst moments inside a decoder layer: what is live while one module runs.

The phase model (:mod:`planner.memory.moments`) takes the largest of these beside the step's
persistent state; each function here is one formula for one kind of moment, read off the
exact tracer (``probe --device fake``), and reads module roles (planner.model.architectures),
never module names.

Notation as in :mod:`planner.memory.terms`: T = batch * seq tokens, h = hidden size,
I = intermediate size, c = bytes of the compute dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model import counts
from planner.model import targets
from planner.model.architectures import ATTENTION_ROLES, Linear
from planner.memory.terms import FP32, Precision, attention_core_saved, eager_fused_qkv_kept, layer_saved_sequence, uses_eager
from planner.memory.variants import NoAdapter, variant
from planner.model.specs import ModelSpec, TrainSpec


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
    live = (variant(train).adapter if targeted else NO_ADAPTER).input_live(last, train, prec)
    base = train.tokens * last.out_features * prec.hidden if targeted else 0
    return live + layer_locals(model, train, prec, last) + base


def adapter_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """The worst moment of an adapted module's own backward: (what the layer still keeps, the
    adapter's backward workspace, its kind's ``backward_workspace``: DoRA's fp32 gradients).
    By then the layer's later modules have been through backward: it still keeps what came up
    to and including this module. (0, 0) for an adapter whose backward makes nothing more."""
    adapter = variant(train).adapter
    seq = layer_saved_sequence(model, train, prec)
    best = (0, 0)
    for lin in targets.targeted_linears(model, train.target_modules):
        workspace = adapter.backward_workspace(lin, train, prec)
        if not workspace:
            continue
        kept = saved_before(seq, lin.name) + adapter.saved(lin, train, prec)
        if kept + workspace > sum(best):
            best = (kept, workspace)
    return best

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
      other modules it is their input, the adapter kind's ``input_live``);
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


def recompute_locals(model: ModelSpec, train: TrainSpec, prec: Precision, lin: Linear) -> int:
    """What a checkpointed layer's recomputation holds in Python variables while module
    ``lin`` runs: with a 16-bit residual stream, the forward's own :func:`layer_locals` (the
    attention block's sum, the norm output passed to o_proj / down_proj, act(gate) at up_proj);
    with an fp32 stream (4-bit methods, `mixed`) none beyond the saved set, the norms keeping
    those fp32 tensors themselves. Tracer, Mistral-7B 2 layers, batch 4, seq 2048, autocast
    with checkpointing, at down_proj's weight norm in the recomputation: DoRA bf16, the bf16
    [4, 2048, 4096] attention sum and post-attention norm output live beside the recomputed
    saved set (the plan 2.8% under without them); QDoRA, no tensor beyond it (the plan exact
    without them, 3.4% over with them)."""
    if prec.stream == FP32:
        return 0
    return layer_locals(model, train, prec, lin)


NO_ADAPTER = NoAdapter()  # a module the adapter does not target


@dataclass(frozen=True)
class LayerMoment:
    """The worst moment inside one layer's forward, in parts (bytes)."""

    live: int = 0  # the module's input and peft's fp32 cast of it
    before: int = 0  # what the layer has kept so far (none in a checkpointed forward)
    locals: int = 0  # :func:`layer_locals`
    working: int = 0  # the outputs the module is forming (its adapter's working_set), when neither transient runs
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
    The module is then at one of its moments: forming its outputs (its adapter kind's
    ``working_set``, planner.memory.variants),
    a 4-bit matmul's dense weight (QLoRA / QDoRA), or DoRA's norm computation. QDoRA casts the
    dequantized weight to fp32 before the norm computation and drops it, so the two never
    coexist: the larger counts.
    In a recomputation the worst moment comes once the module's backward has begun, with the
    gradients of the module's input beside the recomputed set; that backward working set is
    not modelled here: the recomputation counts only the transients (dequant, DoRA), with the
    recomputed forward's locals (:func:`recompute_locals`), and no working set (tracer: Mistral-7B QLoRA's peak at down_proj's backward holds
    three fp32 [4, 2048, 14336] input gradients).
    """
    seq = layer_saved_sequence(model, train, prec)
    targeted = targets.targeted_names(model, train)
    keeps = recompute or not train.gradient_checkpointing
    method = variant(train)
    best, best_total = (), 0  # the parts (live, before, locals, working, dequant, dora) of the worst moment
    for lin in model.linears:
        is_target = lin.name in targeted
        adapter = method.adapter if is_target else NO_ADAPTER
        live = adapter.input_live(lin, train, prec)
        before = saved_before(seq, lin.name) if keeps else 0
        local = recompute_locals(model, train, prec, lin) if recompute else layer_locals(model, train, prec, lin)
        dequant = method.base.dequant_transient(lin, prec, backward=recompute)
        dora = adapter.norm_transient(lin, train, prec)
        context = live + before + local
        if not recompute:
            # While lora_B runs, lora_A has kept its input copy and output (unless checkpointing
            # drops them); DoRA's kept base and LoRA outputs are the working set's own
            own = adapter.running_kept(lin, train, prec) if keeps else 0
            working = adapter.working_set(lin, train, prec)
            if context + own + working > best_total:
                best, best_total = (live, before + own, local, working, 0, 0), context + own + working
        if dequant > dora and context + dequant > best_total:
            best, best_total = (live, before, local, 0, dequant, 0), context + dequant
        elif dora >= dequant and dora and context + adapter.norm_context(lin, train, prec) + dora > best_total:
            made = adapter.norm_context(lin, train, prec)  # the base output, made before the norm
            best, best_total = (live + made, before, local, 0, 0, dora), context + made + dora
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
    softmax, 10 bytes per score, at the forward peak. In an fp32 attention
    (:attr:`Precision.attention`) softmax makes no upcast: a + 4 bytes. A zero moment where
    :func:`eager_scores` is 0."""
    scores = eager_scores(model, train)
    if not scores:
        return LayerMoment()
    keeps = not train.gradient_checkpointing
    seq = layer_saved_sequence(model, train, prec)
    q = model.layer.by_role("q", "qkv")[0]
    return LayerMoment(live=attention_core_saved(model, train, prec) - scores * prec.eager_probabilities,
                       before=saved_before(seq, "attention") if keeps else 0,
                       locals=layer_locals(model, train, prec, q),
                       working=scores * (prec.attention + 2 * FP32 - (FP32 if prec.attention == FP32 else 0)))


def eager_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """Eager attention's softmax backward: (what the layer still keeps, workspace). The layer
    keeps what came before attention and attention's own saved set but the c-byte
    probabilities (freed once the probabilities-times-v matmul's backward is done); the
    workspace is the fp32 gradient of the probabilities (the backward of their cast to c
    bytes) and softmax's fp32 input gradient, 8 bytes per score (no cast is freed in an fp32
    attention, :attr:`Precision.eager_probabilities`) (tracer, tiny Llama asked for
    eager with checkpointing, batch 1, seq 1024: the recomputed fp32 softmax and these two
    fp32 gradients, 12 bytes per score, at the backward peak). (0, 0) where
    :func:`eager_scores` is 0."""
    scores = eager_scores(model, train)
    if not scores:
        return 0, 0
    seq = layer_saved_sequence(model, train, prec)
    kept = saved_before(seq, "attention") + attention_core_saved(model, train, prec) - scores * (prec.eager_probabilities - FP32)
    # that matmul's backward also freed v, and with it a fused qkv output it kept alive (tracer,
    # Phi-3-mini QLoRA pure fp32 eager, checkpointing, batch 1: no [1, 1664, 9216] qkv output
    # at the softmax backward, only v's [32, 1664, 96] gradient, which the T*q_dim of v stands for)
    kept -= eager_fused_qkv_kept(model, train, prec)
    if not train.gradient_checkpointing:
        # the gradient of the residual stream after attention, T*h in the stream's dtype, alive
        # until the layer's input gradient is summed (with checkpointing the moment counts it as
        # recompute_incoming_grads) (tracer, tiny Phi-3 QLoRA pure fp32 eager, batch 1, seq 512:
        # one fp32 [1, 512, 128] gradient beside the softmax backward)
        kept += train.tokens * model.hidden_size * prec.stream
    return kept, 2 * scores * FP32
