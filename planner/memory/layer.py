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

from planner.model import targets
from planner.model.architectures import ATTENTION_ROLES, INDEXER_ROLES, SHARED_ROLES, Linear
from planner.memory.terms import (FP32, Precision, attention_core_saved, eager_fused_qkv_kept, indexer_workspace,
                                  layer_saved_sequence, routed_outputs_held, sink_softmax, uses_eager)
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
    live at the backward peak. Less what the layer saves after its last module, not made yet
    there: the norms after it (:func:`saved_after_last_module`). 0 without checkpointing."""
    if not train.gradient_checkpointing:
        return 0
    last = model.linears[-1]
    targeted = last.name in targets.targeted_names(model, train)
    adapter = variant(train).adapter if targeted else NO_ADAPTER
    live = adapter.input_live(last, train, prec) + adapter.dropout_live(last, train, prec)
    base = train.tokens * last.out_features * prec.hidden if targeted else 0
    return live + layer_locals(model, train, prec, last) + base - saved_after_last_module(model, train, prec)


def saved_after_last_module(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What a layer saves after its last Linear runs: the saved sets of the norms after it in
    :func:`layer_saved_sequence` (sandwich and post-norm layers' MLP output norm), which a
    moment inside that Linear does not hold yet (tracer, EXAONE-4.0-32B cut to 4 layers, LoRA
    bf16 autocast, dropout 0.1, checkpointing, batch 2 x 1792 on 2 GPUs (FSDP): no fp32
    post_feedforward_layernorm input at the recomputation's peak inside down_proj)."""
    seq = layer_saved_sequence(model, train, prec)
    names = {lin.name for lin in model.linears}
    last = max((i for i, (name, _) in enumerate(seq) if name in names), default=None)
    if last is None:
        return 0
    return sum(size for name, size in seq[last + 1:] if name == "norm")


def adapter_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """The worst moment of an adapted module's own backward: (what the layer still keeps, the
    adapter's backward workspace, its kind's ``backward_workspace``: DoRA's fp32 gradients).
    By then the layer's later modules have been through backward: it still keeps what came up
    to and including this module. (0, 0) for an adapter whose backward makes nothing more."""
    adapter = variant(train).adapter
    seq = layer_saved_sequence(model, train, prec)
    best = (0, 0)
    gc = train.gradient_checkpointing
    for lin in targets.targeted_linears(model, train.target_modules):
        workspace = adapter.backward_workspace(lin, train, prec, stops=gc and lin.name == model.linears[-1].name)
        if not workspace:
            continue
        kept = saved_before(seq, lin.name) + adapter.saved(lin, train, prec)
        if gc:  # the recomputed forward's locals, and the gate output act(gate) saved before up_proj
            kept += recompute_locals(model, train, prec, lin) + gate_saved_at_up(model, train, prec, lin)
            kept -= input_norm_shared(model, train, prec)
        if kept + workspace > sum(best):
            best = (kept, workspace)
    return best

def down_backward_kept(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing, a recomputed layer at down_proj's backward, the first module's in it
    (adapters): the recomputed saved set but down's own (:func:`saved_before`), less the input
    norm's that is the checkpointed input itself (:func:`input_norm_shared`), and the gradient of
    down's input, T*I in the hidden dtype, made as the base Linear's, the adapter's (cast back
    from the compute dtype where the hidden one differs) and their sum, all three alive at the
    sum; one, the base's, where down is not adapted. Tracer, Mistral-7B 2 and 8 layers, QLoRA
    r8 all-linear, batch 4 x 2048: the backward peak at down's backward in the last layer's
    recomputation, gate and up outputs, act(gate) and three fp32 [4, 2048, 14336] input
    gradients, 119 MB above the logits moment (the plan 2.3% under at 2 layers, 0.93% on the
    32-layer model). 0 without checkpointing, for full fine-tuning (its walk) and without down."""
    downs = model.layer.by_role("down")
    if not (train.gradient_checkpointing and train.is_adapter and downs):
        return 0
    down = downs[0]
    grads = 3 if down.name in targets.targeted_names(model, train) else 1
    return (saved_before(layer_saved_sequence(model, train, prec), down.name) - input_norm_shared(model, train, prec)
            + grads * train.tokens * down.in_features * prec.hidden)


def gate_saved_at_up(model: ModelSpec, train: TrainSpec, prec: Precision, lin: Linear) -> int:
    """While up_proj runs, the gate output the activation saved (T*I*hidden), part of the
    MLP's saved set that :func:`layer_saved_sequence` lists after the gate / up modules
    (act_fn(gate_proj(x)) * up_proj(x): gate runs first). 0 at other modules and without a
    separate gate. Tracer, Mistral-7B 2 layers, DoRA bf16 autocast with checkpointing, batch 4
    x 2048, at up_proj's DoRA output in the recomputation: gate_proj's bf16 [4, 2048, 14336]
    output beside act(gate) (the plan 3.4% under without it)."""
    if lin.role != "up" or not model.layer.by_role("gate"):
        return 0
    return train.tokens * model.intermediate_size * prec.hidden


def input_norm_shared(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """With checkpointing and an fp32 residual stream (4-bit methods, `mixed`), the input norm
    of the recomputed layer saves the layer's input itself (RMSNorm's x.to(float32) returns
    it), which the checkpoint keeps already (activations/saved): T*h*4 of the norm's entry in
    :func:`layer_saved_sequence` that is no new tensor. 0 with a 16-bit stream, whose norm saves
    its own fp32 copy. Tracer, Phi-3-mini 2 layers, QDoRA bf16 autocast with checkpointing, batch
    4 x 2048: at qkv_proj's and gate_up_proj's DoRA output in the recomputation, no fp32 [4,
    2048, 3072] beside the checkpointed layer inputs (the plan 96 MiB over at both)."""
    if not train.gradient_checkpointing or prec.stream != FP32 or not model.layer.norms_at("attn_in"):
        return 0
    return train.tokens * model.hidden_size * FP32


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
    kept = stream_saved(model, train, prec)
    total = 0 if gc else t * h * s  # inputs_embeds
    if not gc and not kept:
        total += t * h * s  # the layer's input (the input norm kept an fp32 copy, not it)
    if not in_attention and (gc or not kept):
        total += t * h * s  # the attention block's sum
    if role in ("o", "down", "delta_out") and model.traits.placement != "post":
        total += t * h * s  # (a post-norm block reads the residual stream itself, held already)
    if gc and role == "up":
        total += t * model.intermediate_size * prec.hidden
    return total + _routed_held(model, train, prec, lin)


def _routed_held(model: ModelSpec, train: TrainSpec, prec: Precision, lin: Linear) -> int:
    """A shared expert's module run after dense experts: their locals (terms.routed_outputs_held)."""
    return routed_outputs_held(model, train, prec) if lin.role in SHARED_ROLES else 0


def stream_saved(model: ModelSpec, train: TrainSpec, prec: Precision) -> bool:
    """Whether the fp32 residual stream's tensors a layer's forward holds (its input, the
    attention block's sum) are saved for backward anyway: a pre-norm's RMSNorm saves
    ``x.to(float32)``, the tensor itself. A post-norm layer (OLMo-2, EXAONE-4) has no norm
    before its blocks; the Linears reading the stream keep it only where they make no cast of it
    (no autocast, no dropout). Tracer, EXAONE-4.0-32B cut to 4 layers, QDoRA bf16 autocast,
    batch 4 x 512: the fp32 layer input and attention sum live beside the last layer's saved
    set at down_proj's weight norm, no saved tensor of the same storage. False for a 16-bit
    stream (its norms save their own fp32 copies)."""
    if prec.stream != FP32:
        return False
    return model.traits.placement != "post" or (not prec.autocast and train.lora_dropout == 0)


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
        # (a post-norm layer's MLP holds the attention block's fp32 sum, unless it is saved:
        # :func:`stream_saved`; tracer, EXAONE-4.0-32B QDoRA with checkpointing, batch 4 x 2048)
        saved = stream_saved(model, train, prec) or lin.role in ATTENTION_ROLES
        return (0 if saved else train.tokens * model.hidden_size * FP32) + _routed_held(model, train, prec, lin)
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
        if lin.role in INDEXER_ROLES:  # the indexer's moment is its scoring's (:func:`indexer_forward_moment`)
            continue
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
    scoring = indexer_workspace(model, train, prec)
    if scoring:  # DeepSeek-V3.2's indexer scoring every key, after the latent attention's modules
        q = model.layer.by_role("index_q")[0]
        before = saved_before(seq, "attention") if keeps else 0
        local = recompute_locals(model, train, prec, q) if recompute else layer_locals(model, train, prec, q)
        made = latent_attention_made(model, train, prec)
        if made + before + local + scoring > best_total:
            best, best_total = (made, before, local, scoring, 0, 0), made + before + local + scoring
    return LayerMoment(*best)


def latent_attention_made(model: ModelSpec, train: TrainSpec, prec: Precision) -> int:
    """What multi-head latent attention's forward has made when its kernel has not run yet (DeepSeek-V3.2's
    indexer runs there: transformers 5.23 DeepseekV32Attention.forward), H heads of q / k width qk (nope
    + rope) and v width dv, in the Linear outputs' dtype a: q_b's output (its views are the forward's
    locals), its rotated slice and q, their torch.cat; k, copied into a new tensor; kv_b's output,
    whose slice v is: T*H*(3*qk + rope + nope + dv)*a (SDPA's autocast casts come later). Tracer,
    DeepSeek-V3.2 widths cut to 2 layers, full fine-tuning with checkpointing, seq 8192: bf16 [8192,
    24576], two [1, 128, 8192, 192], [1, 128, 8192, 64] and [8192, 32768] tensors beside the
    indexer's scores at the forward peak."""
    mla = model.layer.mla
    return train.tokens * model.num_heads * (3 * mla.qk + mla.rope + mla.nope + mla.v) * prec.hidden


def eager_scores(model: ModelSpec, train: TrainSpec) -> int:
    """batch * heads * seq * seq: the number of attention scores of one layer whose softmax
    runs eagerly; 0 for SDPA / flash and for attention with sinks (gpt-oss's own path,
    :func:`attention_core_saved`)."""
    if (not uses_eager(model, train) or model.traits.attention_sinks or model.layer.deltanet is not None
            or not model.layer.by_role("q", "qkv")):  # (a layer without attention: a Mamba-2 or MLP-only one)
        return 0
    return train.batch_size * model.num_heads * train.seq_len * train.seq_len


def has_sinks(model: ModelSpec, train: TrainSpec) -> bool:
    """Whether a layer runs eager attention with sinks (:func:`planner.memory.terms.sink_softmax`)."""
    return (uses_eager(model, train) and model.traits.attention_sinks and model.layer.deltanet is None
            and bool(model.layer.by_role("q", "qkv")))


def eager_forward_moment(model: ModelSpec, train: TrainSpec, prec: Precision, recompute: bool = False) -> LayerMoment:
    """Eager attention's softmax in a layer's forward (transformers' eager_attention_forward,
    ``softmax(scores + mask, dtype=float32)``): the masked scores (c bytes each), softmax's
    fp32 upcast of them and its fp32 output, (c + 8) bytes per score, beside q and the
    repeated k and v the matmuls use (the non-score part of :func:`attention_core_saved`),
    what the layer has kept before attention and its locals. Tracer, tiny Llama asked for
    eager with checkpointing, batch 1, seq 1024: the bf16 sum, the fp32 copy and the fp32
    softmax, 10 bytes per score, at the forward peak. In an fp32 attention
    (:attr:`Precision.attention`) softmax makes no upcast: a + 4 bytes. With sinks (gpt-oss) the
    score tensors and attention's other tensors are :func:`planner.memory.terms.sink_softmax`'s.
    ``recompute``: the checkpointed layer's recomputation, which has kept what came before
    attention. A zero moment where there is no eager softmax."""
    if has_sinks(model, train):
        sink = sink_softmax(model, train, prec)
        live, working = sink.forward_rest, sink.forward
    else:
        scores = eager_scores(model, train)
        if not scores:
            return LayerMoment()
        live = attention_core_saved(model, train, prec) - scores * prec.eager_probabilities
        working = scores * (prec.attention + 2 * FP32 - (FP32 if prec.attention == FP32 else 0))
    keeps = recompute or not train.gradient_checkpointing
    seq = layer_saved_sequence(model, train, prec)
    q = model.layer.by_role("q", "qkv")[0]
    return LayerMoment(live=live,
                       before=saved_before(seq, "attention") if keeps else 0,
                       locals=layer_locals(model, train, prec, q), working=working)


def eager_backward_moment(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[int, int]:
    """Eager attention's softmax backward: (what the layer still keeps, workspace). The layer
    keeps what came before attention and attention's own saved set but the c-byte
    probabilities (freed once the probabilities-times-v matmul's backward is done); the
    workspace is the fp32 gradient of the probabilities (the backward of their cast to c
    bytes) and softmax's fp32 input gradient, 8 bytes per score (no cast is freed in an fp32
    attention, :attr:`Precision.eager_probabilities`) (tracer, tiny Llama asked for
    eager with checkpointing, batch 1, seq 1024: the recomputed fp32 softmax and these two
    fp32 gradients, 12 bytes per score, at the backward peak). With sinks (gpt-oss) the
    softmax output stays and the workspace is :func:`planner.memory.terms.sink_softmax`'s.
    (0, 0) where there is no eager softmax."""
    seq = layer_saved_sequence(model, train, prec)
    if has_sinks(model, train):
        sink = sink_softmax(model, train, prec)
        freed, work = sink.saved - sink.kept, sink.backward
    else:
        scores = eager_scores(model, train)
        if not scores:
            return 0, 0
        freed, work = scores * (prec.eager_probabilities - FP32), 2 * scores * FP32
    kept = saved_before(seq, "attention") + attention_core_saved(model, train, prec) - freed
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
    return kept, work


def first_layer_backward_walk(model: ModelSpec, train: TrainSpec, prec: Precision) -> tuple[tuple[str, int, int, int], ...]:
    """Full fine-tuning: the first decoder layer's backward as a sequence of moments, one per
    block in backward order, each ``(name, kept, pending, workspace)``: the layer's saved set
    still kept (what its forward made before the block, and the block's own), the layer's
    weight gradients not made yet (the block's and the earlier blocks'), and the block's backward
    workspace, which includes the layer output's gradient (T*h*s, live through the layer's backward).
    The moment's gradients are every gradient made before the layer's backward plus the
    layer's own minus ``pending``.

    The first moment is the recomputation's stop (checkpointing: the whole saved set,
    :func:`recompute_stop_extra` and the gradients in flight, no layer gradient yet) or, without
    checkpointing, the whole saved set. Kept throughout: RoPE's tables (:func:`rope_saved`), the
    batch's ids (:func:`step_small_bytes`) and, with checkpointing, the layer's input (T*h*s),
    which the checkpoint holds until the layer's backward ends. Then, backward from
    the last block, with a the Linear outputs' bytes, s the stream's, c the compute dtype's:

    - down_proj: its weight gradient (I*h) and input gradient T*I*a, then its input (T*I*c) is freed;
    - the gated MLP: its saved outputs and 3*T*I*a (down_proj's input gradient and the product's
      two gradients), then freed (:func:`planner.memory.terms.mlp_core_saved`);
    - the MLP's input Linears (gate / up / gate_up): their weight gradients, their output
      gradients (T*out*a each) and input gradients (T*h*a, plus the cast back to an fp32
      stream, and their sum with several readers), then their input copy(s) freed;
    - each norm: the gradient of its output (T*h*s) and four fp32 T*h temporaries of the
      RMSNorm backward (upcast, pow, mul, div), then its saved set freed;
    - o_proj: its weight gradient and input gradient (T*q_dim*a), then its input copy freed;
    - attention: the output's gradient (T*q_dim*a) and dq, dk, dv (T*(q_dim + 2*kv_dim)*a),
      then the kernel's saved set freed;
    - q / k / v (or qkv): as the MLP's input Linears.
    A Linear writing into a post-norm (Gemma's sandwich norms) also holds its output gradient.
    Under `mixed` each Linear's autocast copy of its fp32 weight (in*out*c) is kept until its
    backward is done (tracer, tiny Llama full bf16 mixed, checkpointing: bf16 copies of gate,
    up, q, k, v, o at the MLP product's backward).

    Tracer, Phi-3-mini 2 layers, full fp16 pure, batch 3 x 768, checkpointing, one GPU: above
    what was live before layer 0's recomputation, 451.7 MB at down_proj (plan 451.6), 489.4 at
    the MLP product's backward (plan 489.4, the layer's worst), 453.3 at gate_up_proj (453.4),
    476.8 at the post-attention norm (476.9), 339.9 at o_proj (340.1), 368.3 at the attention
    backward (368.3), 339.7 at qkv_proj (339.8), 396.3 at the input norm (396.3); every layer
    gradient beside the whole recomputed set, as planned before, was 670.

    () where the walk is not modelled: adapters (whose layer gradients are small), mixtures of
    experts, DeepSpeed ZeRO (partitioned gradients); the callers then count every gradient
    beside the whole saved set.
    """
    from planner.memory.sharding import elements, trainable_tensors
    from planner.memory.terms import (step_small_bytes, layer_saved, mlp_backward_work, mlp_core_saved, norm_saved,
                                      norm_output_bytes,
                                      recompute_incoming_grads, rope_saved, trainable_bytes_per_param)
    from planner.model.architectures import MLP_INPUT_ROLES, ATTENTION_INPUT_ROLES

    if (train.method != "full" or model.moe is not None or model.layer.mla is not None
            or train.sharding not in ("none", "ddp", "fsdp")):
        return ()
    t, h, layer = train.tokens, model.hidden_size, model.layer
    c, a, s, att = prec.compute, prec.hidden, prec.stream, prec.attention
    g = trainable_bytes_per_param(train, prec)
    gc = train.gradient_checkpointing
    total = elements(trainable_tensors(model, train, layer_only=True)) * g
    residual = t * h * s
    own_copies = prec.autocast and norm_output_bytes(model, prec) != c  # each reader casts the fp32 norm output itself

    def norm_block(norm):
        heads = (model.num_heads if norm.site == "q" else model.num_kv_heads) if norm.per_head else 1
        rows_width = t * heads * norm.size if norm.site in ("q", "k") else t * h
        out = a if norm.site in ("q", "k") else s
        return ("norm", norm_saved(model, train, prec, norm), norm.params * g, rows_width * (out + 4 * FP32))

    def readers_block(roles, name):
        lins = layer.by_role(*roles)
        if not lins:
            return []
        n = len(lins)
        inputs = t * lins[0].in_features * c * (n if own_copies else 1)
        d_in = t * lins[0].in_features * (a + (s if s != a else 0))
        work = sum(t * lin.out_features * a for lin in lins) + d_in * (1 if n == 1 else 3)
        return [(name, inputs + sum(copy(lin) for lin in lins), sum(lin.params for lin in lins) * g, work)]

    def copy(lin):  # autocast's c-byte copy of an fp32 weight, kept for the input gradient (`mixed`)
        return lin.in_features * lin.out_features * c if prec.autocast and prec.weight != c else 0

    sandwich = {n.site for n in layer.norms}
    o_copy = model.traits.rotary_concat or uses_eager(model, train)  # o_proj keeps a copy of its input
    blocks = [norm_block(n) for n in layer.norms_at("attn_in")]
    blocks += readers_block(ATTENTION_INPUT_ROLES, "attention_input")
    blocks += [norm_block(n) for n in layer.norms_at("q", "k")]
    blocks.append(("attention", attention_core_saved(model, train, prec), 0,
                   t * model.q_dim * a + t * (model.q_dim + 2 * model.kv_dim) * att))
    for lin in layer.by_role("o"):
        blocks.append(("o", (t * model.q_dim * c if o_copy else 0) + copy(lin), lin.params * g,
                       t * lin.in_features * a + (t * lin.out_features * a if "attn_out" in sandwich else 0)))
    blocks += [norm_block(n) for n in layer.norms_at("attn_out", "mlp_in")]
    blocks += readers_block(MLP_INPUT_ROLES, "mlp_input")
    blocks.append(("mlp", mlp_core_saved(model, train, prec), 0, mlp_backward_work(model, train, prec)))
    for lin in layer.by_role("down"):
        blocks.append(("down", t * lin.in_features * c + copy(lin), lin.params * g,
                       t * lin.in_features * a + (t * lin.out_features * a if "mlp_out" in sandwich else 0)))
    blocks += [norm_block(n) for n in layer.norms_at("mlp_out")]

    # the layer's RoPE tables (its checkpoint's arguments, or saved by its rotation) and the ids
    kept = layer_saved(model, train, prec) + rope_saved(model, train, prec) + step_small_bytes(model, train)
    kept += sum(copy(lin) for lin in layer.linears)
    if gc:
        steps = [("recompute", kept + recompute_stop_extra(model, train, prec) + residual, total,
                  recompute_incoming_grads(model, train, prec))]
        kept += residual  # the checkpointed input
    else:
        steps = [("saved", kept, total, 0)]
    pending = total
    for name, frees, grads, work in reversed(blocks):
        pending -= grads
        steps.append((name, kept, pending, work + residual))
        kept -= frees
    return tuple(steps)
