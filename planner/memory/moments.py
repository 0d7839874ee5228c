"""The named moments of one training step; the peak is the largest.

The peak is not the sum of all terms: it is the largest of the step's moments, each an
instant at which some terms are live (docs/design.md, "Phases"). A moment is a function
registered here under its phase and name (:func:`moment`) that returns its live bytes by
component key, or None where it does not happen (a recomputation without checkpointing, an
all-gather on one GPU). Its terms come from :class:`Step`, which computes each term of
planner.memory.terms, layer and sharding once for the step.

- forward: the loss (every saved activation, the logits and their fp32 copies), or a
  module of the last layer (its transients beside what the earlier layers kept), or an
  all-gathered layer under FSDP;
- backward: the logits' gradients with every activation kept, a layer's backward (its
  recomputation, inside its grouped experts too, dequantization, DoRA's or the experts'
  workspace, eager attention's softmax), the first layer's with every gradient made, the
  embedding's, lm_head's;
- optimizer: the step, every gradient and the optimizer's temporaries.

A plan reports its peak phase and moment (``peak_moment``), and its breakdown is that
moment's terms.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Callable

from planner.memory import terms as C
from planner.memory import layer as M
from planner.memory import sharding as S
from planner.model import inventory as inv
from planner.model.architectures import Linear
from planner.model.specs import ModelSpec, TrainSpec

from planner.units import PHASES

# Every component key, in display order. A phase holds all of them (zeros included), so
# that tables and JSON have stable keys.
COMPONENT_KEYS = (
    "weights/base",
    "weights/quant_state",
    "adapters/params",
    "adapters/modules",
    "grads",
    "optimizer/states",
    "optimizer/transient",
    "activations/saved",
    "activations/autocast_weights",
    "activations/logits",
    "activations/input_leaf",
    "transient/module",
    "transient/dequant",
    "transient/dora",
    "transient/dora_backward",
    "transient/recompute",
    "transient/embedding_backward",
    "transient/moe_backward",
    "transient/attention",
)
# Several GPUs (planner.memory.sharding): in a plan's phases only when train.num_gpus > 1, so that a
# one-GPU plan keeps exactly its keys.
PARALLEL_KEYS = (
    "parallel/unsharded_root",
    "parallel/unsharded_layer",
    "parallel/prefetch",
    "parallel/reduce_scatter",
    "parallel/grad_buckets",
)


@dataclass(frozen=True)
class StepMemory:
    """The live bytes of each phase of one training step, as named breakdowns."""

    phases: dict[str, dict[str, int]]
    paged_optimizer_bytes: int
    moments: dict[str, str]  # phase -> the name of the moment that peaked in it (MOMENTS)

    def total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.total)

    @property
    def peak_moment(self) -> str:
        return self.moments[self.peak_phase]

    @property
    def peak_bytes(self) -> int:
        return self.total(self.peak_phase)


@dataclass(frozen=True)
class Moment:
    """One instant of the step: its name, its live bytes by term (``weights__base`` names the
    component ``weights/base``) and their sum."""

    name: str
    values: dict[str, int]
    total: int

    @property
    def terms(self) -> dict[str, int]:
        """The breakdown over every component key (zeros included) and the parallel keys given."""
        out = _ZEROS.copy()
        for key, value in self.values.items():
            out[_KEY_OF[key]] = value
        return out


def _total(moment: Moment) -> int:
    return moment.total


_KEY_OF = {key.replace("/", "__"): key for key in COMPONENT_KEYS + PARALLEL_KEYS}
_ZEROS = dict.fromkeys(COMPONENT_KEYS, 0)


def _breakdown(moment: str, **values: int) -> Moment:
    """The moment named ``moment``, of the terms given (``weights__base`` names the component
    ``weights/base``); a name that is not a component key is a bug, refused."""
    if not values.keys() <= _KEY_OF.keys():
        unknown = sorted(set(values) - set(_KEY_OF))
        raise KeyError(f"{unknown[0].replace('__', '/')!r} is not a component key (planner.memory.moments.COMPONENT_KEYS)")
    return Moment(moment, values, sum(values.values()))


# ---------------------------------------------------------------- the step's terms, once

@dataclass(frozen=True)
class Step:
    """What the moments of one step read: its settings, its per-GPU persistent state and
    gradients, the parallel terms live at a moment (:func:`_per_gpu`), and every other term
    computed once, when a moment first reads it."""

    model: ModelSpec
    train: TrainSpec
    prec: C.Precision
    persistent: dict[str, int]  # weights, adapters, saved modules, optimizer states (one rank's)
    grads: int  # at the optimizer step
    end_grads: int  # at the end of backward (FSDP: the other layers' shards)
    opt_transient: int
    parallel: Callable[[str, int], dict[str, int]]  # the parallel terms live at a moment in a layer (none on one GPU)
    layer: int = -1  # the layer whose kind the in-layer terms read (:meth:`_last`): the last, or 0

    @cached_property
    def first_view(self) -> "Step":
        """This step with its in-layer terms read at the first layer's kind (a model whose
        first layers are dense reads a dense layer there, not the last layer's experts)."""
        return replace(self, layer=0)

    @cached_property
    def layer_grads(self) -> int:
        """The gradients of one layer of :attr:`layer`'s kind (the adapters' or the trained
        weights'), as stored."""
        return sum(t.stored_bytes for t in self._layer_tensors)

    @cached_property
    def attention_grads(self) -> int:
        """The part of :attr:`layer_grads` of the layer's attention block (inventory.attention_block),
        which its backward makes last."""
        return sum(t.stored_bytes for t in inv.attention_block(self._kind.layer, self._layer_tensors))

    @cached_property
    def _kind(self):
        return self.model.kind_of(self.layer)

    @cached_property
    def _layer_tensors(self) -> tuple:
        return inv.of_kind(inv.trained(inv.inventory(self.model, self.train, self.prec.weight)), self._kind.name)

    @property
    def gc(self) -> bool:
        return self.train.gradient_checkpointing

    def _term(self, fn):
        return fn(self.model, self.train, self.prec)

    def _last(self, fn, **kw):
        """A term of the last decoder layer (its kind's view of the model); of the first in
        :attr:`first_view`."""
        return fn(self.model.kind_view(self.layer), self.train, self.prec, **kw)

    def _first(self, fn):
        """A term of the first decoder layer (its kind's view of the model)."""
        return fn(self.model.kind_view(0), self.train, self.prec)

    @cached_property
    def saved(self) -> int:
        return self._term(C.activations_saved)

    @cached_property
    def layer_copies(self) -> int:
        return self._term(C.autocast_weight_copies)

    @cached_property
    def head_copy(self) -> int:
        return self._term(C.lm_head_autocast_copy)

    @cached_property
    def back_copies(self) -> int:
        """The layers' autocast copies live in backward (with checkpointing, the recomputed
        last layer's)."""
        if self.gc:
            return self._last(C.backward_autocast_copies)
        return self._term(C.backward_autocast_copies)

    @cached_property
    def final_norm(self) -> int:
        """The final norm's saved set and a trained lm_head's input: not made yet while the
        layers run forward, freed by lm_head's backward before theirs (tracer, tiny Llama LoRA
        with eager attention, lm_head saved, batch 2 x 512: the bf16 T x h input gone at the
        last layer's softmax backward, the peak)."""
        return C.norm_saved(self.model, self.train, self.prec) + self._term(C.lm_head_input_saved)

    @cached_property
    def masks(self) -> int:
        """Without checkpointing, the eager path's masks (terms.eager_masks), held by the model's
        forward through the decoder loop, beside the softmax in the layers' forward (with it the
        checkpoints hold them, in :attr:`saved`). Tracer, gpt-oss-20b 2 layers, QLoRA, batch 1 x
        8192: two fp32 [1, 1, 8192, 8192] masks beside the second layer's softmax, the peak; tiny
        Phi-3 QLoRA pure fp32 eager, batch 1 x 512: the plan of that instant within 8 KB with it.
        (The per-module moment leaves it out: without it that moment is already 1.5% over there.)"""
        return 0 if self.gc else self._term(C.eager_masks)

    @cached_property
    def unrun(self) -> int:
        """The saved sets of the layers after :attr:`layer`, not made yet while it runs forward
        (0 for the last layer): their checkpointed inputs with checkpointing, else their kinds'
        saved sets, but what the layers up to the first targeted one do not keep where that
        comes after :attr:`layer` (terms.leading_unrecorded). Tracer, DeepSeek-V3.2-Exp cut to
        a dense and a MoE layer, LoRA bs1x8192: the dense layer 0's indexer scoring holds no
        tensor of layer 1 (the plan 7.8% over the forward when it kept layer 1's set)."""
        n = self.model.num_layers
        index = self.layer % n
        if index == n - 1:
            return 0
        if self.gc:
            return C.checkpoint_inputs(self.model, self.train, self.prec, first=index + 1)
        views = [self.model.kind_view(j) for j in range(n)]
        later = sum(C.layer_saved(views[j], self.train, self.prec) for j in range(index + 1, n))
        if C.first_targeted_layer(self.model, self.train) > index:
            up_to = sum(C.layer_saved(views[j], self.train, self.prec) for j in range(index + 1))
            later -= max(0, self._term(C.leading_unrecorded) - up_to)
        return later

    @property
    def forward_saved(self) -> int:
        """What the forward has saved while :attr:`layer` runs, beside that layer's own set:
        every activation but the final norm's and the later layers' (:attr:`unrun`)."""
        return self.saved - self.final_norm - self.unrun

    @cached_property
    def per_layer(self) -> int:
        return self._last(C.layer_saved)

    @cached_property
    def recompute(self) -> int:
        return self._last(C.recompute_transient)

    @cached_property
    def in_flight(self) -> int:
        return self._last(C.recompute_incoming_grads)

    @cached_property
    def fwd(self) -> M.LayerMoment:
        return self._last(M.layer_transient)

    @cached_property
    def rec(self) -> M.LayerMoment:
        return self._last(M.layer_transient, recompute=True)

    @cached_property
    def softmax_back(self) -> tuple[int, int]:
        return self._last(M.eager_backward_moment)

    @cached_property
    def leaf(self) -> int:
        return self._term(C.checkpoint_input_leaf)

    @cached_property
    def walk(self) -> tuple:
        """Full fine-tuning's first layer backward, block by block (layer.first_layer_backward_walk)."""
        return self._first(M.first_layer_backward_walk)

    @cached_property
    def head_grads(self) -> int:
        """A trained lm_head's gradient, there from lm_head's backward on (terms.lm_head_grad_kept):
        in the last layer's backward moments; under FSDP the root's unsharded gradient is the
        parallel terms'."""
        return self._term(C.lm_head_grad_kept) if S.strategy(self.train).whole_gradients else 0

    @cached_property
    def made(self) -> int:
        """The gradients made by the first layer's backward: every one but the trained
        embedding's, made last (one GPU, and DDP, whose gradients are whole; a sharded
        embedding's gradient is the parallel terms')."""
        if not S.strategy(self.train).whole_gradients:
            return self.end_grads
        return self.grads - self._term(C.embedding_grad_pending)


def step_context(model: ModelSpec, train: TrainSpec, dtype: str) -> Step:
    """The :class:`Step` of ``train`` on ``model`` in the resolved compute dtype ``dtype``."""
    prec = C.precision(train, dtype)
    persistent = dict(
        weights__base=C.weights_base(model, train, prec),
        weights__quant_state=C.weights_quant_state(model, train),
        adapters__params=C.adapter_bytes(model, train),
        adapters__modules=C.saved_module_bytes(model, train, prec),
        optimizer__states=C.optimizer_states(model, train, prec),
    )
    grads = C.grads(model, train, prec)
    opt_transient = C.optimizer_transient(model, train, prec)
    layer = _worst_last_layer(model, train, prec)
    if not train.parallel:
        return Step(model, train, prec, persistent, grads, grads, opt_transient, _NO_PARALLEL, layer)
    persistent, grads, end_grads, opt_transient, parallel = _per_gpu(model, train, prec, persistent, grads,
                                                                     opt_transient)
    return Step(model, train, prec, persistent, grads, end_grads, opt_transient, parallel, layer)


def _worst_last_layer(model: ModelSpec, train: TrainSpec, prec: C.Precision) -> int:
    """The layer the in-layer moments of the step's end read (:attr:`Step.layer`): the last one,
    or, where the kinds' layouts differ (a Gated DeltaNet hybrid), the last layer of the kind
    that keeps the most (its recomputation and transients are the larger; backward reaches it a
    layer or two after the last, with as good as the same state)."""
    if len({k.layer.linears for k in model.kinds}) < 2:
        return -1
    views = model.by_kind()
    worst = max(range(len(views)), key=lambda i: C.layer_saved(views[i], train, prec))
    return model.kinds[worst].indices[-1]


def _NO_PARALLEL(moment: str, layer: int) -> dict[str, int]:  # one GPU: no parallel terms
    return {}


# ---------------------------------------------------------------- the registry

REGISTRY: dict[str, list[tuple[str, Callable[[Step], dict | list | None]]]] = {phase: [] for phase in PHASES}
FAMILIES: dict[str, tuple[str, ...]] = {}


def moment(phase: str, name: str, family: tuple[str, ...] = ()):
    """Register a moment of ``phase``: a function of the :class:`Step` that returns its live
    bytes by term, or None where the moment does not happen; or, for a ``family`` of moments
    (the blocks of a layer's backward), a list of (name, terms), each name one of ``family``.
    Within a phase, the first of equal moments is the one reported."""
    def register(fn):
        REGISTRY[phase].append((name, fn))
        FAMILIES[name] = family
        return fn
    return register


@lru_cache(maxsize=4096)
def step_memory(model: ModelSpec, train: TrainSpec, dtype: str) -> StepMemory:
    """The largest moment of each phase of one measured (post warm-up) step (cached: the GPU
    enters only through ``dtype``, so every GPU of one dtype shares it; read-only)."""
    step = step_context(model, train, dtype)
    chosen = {}
    for phase, moments in REGISTRY.items():
        candidates = []
        for at in _layer_views(step):
            for name, fn in moments:
                values = fn(at)
                if isinstance(values, list):
                    candidates += [_breakdown(member, **terms) for member, terms in values]
                elif values is not None:
                    candidates.append(_breakdown(name, **values))
        chosen[phase] = max(candidates, key=_total)
    return StepMemory(phases={phase: m.terms for phase, m in chosen.items()},
                      paged_optimizer_bytes=C.optimizer_states_paged(model, train, step.prec),
                      moments={phase: m.name for phase, m in chosen.items()})


def _layer_views(step: Step) -> tuple[Step, ...]:
    """The step, and where a model's kinds differ in their modules (the hybrids: Mamba-2, short
    convolutions, attention-only and MLP-only layers), the step with each other kind's layer in
    its own place: its in-layer moments read that kind, beside the saved sets of the layers
    before it (:attr:`Step.unrun`: the layers after it have not run yet). Tracer, Nemotron-H-8B
    widths cut to 3 layers (Mamba-2, MLP, attention), DoRA bs1x512: the MLP layer's DoRA norm
    transient is the forward peak, 1.5 times what the attention layer's moment plans."""
    kinds = step.model.kinds
    if len(kinds) < 2 or len({k.layer.linears for k in kinds}) < 2:
        return (step,)
    # every kind's last layer but the step's own (the step's may be another kind's: _worst_last_layer)
    n = step.model.num_layers
    return (step,) + tuple(replace(step, layer=k.indices[-1]) for k in kinds if k.indices[-1] % n != step.layer % n)


def clear_caches() -> None:
    """Forget the steps planned so far (:func:`step_memory`) and the layers' saved sets they
    read (planner.memory.terms.layer_saved_sequence): for code that swaps a formula and plans
    again, as the tests' negative controls do."""
    step_memory.cache_clear()
    C.layer_saved_sequence.cache_clear()


# ---------------------------------------------------------------- forward

@moment("forward", "loss")
def _loss(s: Step):
    """The end of forward: every saved activation, the decoder layers' and lm_head's
    autocast copies, the logits and their fp32 copies."""
    return dict(**s.persistent, activations__saved=s.saved, activations__autocast_weights=s.layer_copies + s.head_copy,
                activations__logits=s._term(C.logits_forward), **s.parallel("at_loss", -1))


@moment("forward", "layer_module")
def _layer_module(s: Step):
    """The last layer's worst per-module transient (before lm_head has run): that layer has
    kept only what came before the module; a checkpointed layer keeps nothing in its forward."""
    fwd = s.fwd
    saved = s.forward_saved + fwd.live + (0 if s.gc else fwd.before - s.per_layer)
    return dict(**s.persistent, activations__saved=saved, activations__autocast_weights=s.layer_copies,
                transient__module=fwd.locals + fwd.working, transient__dequant=fwd.dequant,
                transient__dora=fwd.dora, **s.parallel("in_layer", s.layer))


@moment("forward", "layer_dense_experts")
def _layer_dense_experts(s: Step):
    """The last layer's experts forming their output where every expert sees every token (Llama 4)."""
    before, working = s._last(C.dense_moe_forward_moment)
    if not working:
        return None
    saved = s.forward_saved + before - (0 if s.gc else s.per_layer)
    return dict(**s.persistent, activations__saved=saved, activations__autocast_weights=s.layer_copies,
                transient__module=working, **s.parallel("in_layer", s.layer))


@moment("forward", "layer_softmax")
def _layer_softmax(s: Step):
    """Eager attention's softmax in the last layer's forward."""
    eager = s._last(M.eager_forward_moment)
    saved = s.forward_saved + eager.live + eager.before + (0 if s.gc else -s.per_layer) + s.masks
    return dict(**s.persistent, activations__saved=saved, activations__autocast_weights=s.layer_copies,
                transient__module=eager.locals, transient__attention=eager.working, **s.parallel("in_layer", s.layer))


@moment("forward", "layer_experts")
def _layer_experts(s: Step):
    """With checkpointing, the last layer's experts in its forward, LoRA on them: the merged
    expert weights and the experts' tensors (terms.moe_forward_workspace), beside the checkpoints."""
    work = s._last(C.moe_forward_workspace)
    if not work:
        return None
    return dict(**s.persistent, activations__saved=s.forward_saved, activations__autocast_weights=s.layer_copies,
                transient__module=work, **s.parallel("in_layer", s.layer))


@moment("forward", "layer_unpermute")
def _layer_unpermute(s: Step):
    """Without checkpointing, the end of the last layer's grouped experts: its saved set but what
    it saves after them (terms.saved_after_experts), the decoder's locals of an MLP-side module
    (layer.layer_locals: the embedding output, the layer's input, the attention block's sum)
    and the routed output's product and reordered copy (terms.moe_unpermute_transient)."""
    routed = s._last(C.moe_unpermute_transient)
    if not routed:
        return None
    locals_ = s._last(M.layer_locals, lin=_EXPERTS)
    if s.layer % s.model.num_layers == C.first_targeted_layer(s.model, s.train):
        # the first targeted layer's merged expert weight, not kept (terms.experts_merged_unkept)
        routed += s._last(C.experts_merged_unkept)
    saved = s.forward_saved - s._last(C.saved_after_experts)
    return dict(**s.persistent, activations__saved=saved, activations__autocast_weights=s.layer_copies,
                transient__module=locals_ + routed, **s.parallel("in_layer", s.layer))


_EXPERTS = Linear("experts", 0, 0, role="experts")  # the fused experts: an MLP-side module, for layer_locals


@moment("forward", "last_layer_unsharded")
def _last_layer_unsharded(s: Step):
    """Several GPUs: the last layer being unsharded, beside what the earlier layers kept and two
    all-gather buffers."""
    if not s.train.parallel:
        return None
    saved = s.forward_saved - (0 if s.gc else s.per_layer)
    return dict(**s.persistent, activations__saved=saved, activations__autocast_weights=s.layer_copies,
                **s.parallel("layer_start", s.layer))


@moment("forward", "first_layer_unsharded")
def _first_layer_unsharded(s: Step):
    """Several GPUs: the first layer being unsharded; the root's all-gather buffer still
    lingers beside the root's and the layer's parameters and the layer's buffer; only the
    embedding output exists."""
    if not s.train.parallel:
        return None
    embedded = s.train.tokens * s.model.hidden_size * s.prec.stream
    return dict(**s.persistent, transient__module=embedded, **s.parallel("first_layer", 0))


# ---------------------------------------------------------------- backward

@moment("backward", "logits_grad")
def _logits_grad(s: Step):
    """The start of backward: the logits' gradients with every activation still kept. Full
    fine-tuning's first gradient (lm_head, or the tied embedding at the end) is small beside them."""
    return dict(**s.persistent, activations__saved=s.saved,
                activations__autocast_weights=(0 if s.gc else s.back_copies) + s.head_copy,
                activations__logits=s._term(C.logits_backward), **s.parallel("at_loss", -1))


# The last layer's backward (lm_head's copy is gone by then) and the first layer's (every
# gradient made but the embedding's) share their layer parts: with checkpointing the
# recomputation (the whole layer, or the part before the worst per-module transient, with
# that transient); without it, only bitsandbytes' backward dequantizes; the experts' LoRA
# workspace; eager attention's softmax (the first layer's: what full fine-tuning peaks at).

def _recompute_part(s: Step):
    return dict(transient__recompute=s.recompute + s.in_flight + s._last(M.recompute_stop_extra))


def _recompute_module_part(s: Step):
    if not s.gc:
        return None
    rec = s.rec
    # (a recomputed module's working set: only DeepSeek-V3.2's indexer scoring has one there)
    return dict(transient__recompute=rec.live + rec.before + rec.locals + s.in_flight,
                transient__dequant=rec.dequant, transient__dora=rec.dora, transient__attention=rec.working)


def _recompute_down_part(s: Step):
    kept = s._last(M.down_backward_kept)
    return dict(transient__recompute=kept + s.in_flight) if kept else None


def _recompute_experts_part(s: Step):
    """The recomputation inside grouped experts (terms.moe_recompute_locals): the layer's saved
    set but what it saves after the experts (terms.saved_after_experts), the gradients in
    flight and the experts' locals."""
    experts = s._last(C.moe_recompute_locals)
    if not experts:
        return None
    return dict(transient__recompute=s.recompute - s._last(C.saved_after_experts) + s.in_flight + experts)


def _dequant_part(s: Step):
    return None if s.gc else dict(transient__dequant=s._last(C.dequant_transient))


def _moe_part(s: Step):
    """The experts' backward (terms.moe_backward_workspace): with checkpointing beside the
    recomputed saved set but what a shared expert run after dense experts has freed in its own
    backward, before the experts' (terms.shared_freed_before_experts)."""
    workspace = s._last(C.moe_backward_workspace)
    if s.layer % s.model.num_layers == C.first_targeted_layer(s.model, s.train):
        # the first targeted layer's merge backward, its merged weight not kept
        workspace = max(workspace, s._last(C.moe_unkept_merge_backward))
    if not workspace:
        return None
    in_flight = s._last(C.experts_backward_incoming_grads)
    recomputed = s.recompute - s._last(C.shared_freed_before_experts) + in_flight if s.gc else 0
    return dict(transient__recompute=recomputed, transient__moe_backward=workspace)


def _last_layer(part):
    def last_layer(s: Step):
        values = part(s)
        if values is None:
            return None
        return dict(**s.persistent, grads=s.head_grads, activations__saved=s.saved - s.final_norm,
                    activations__autocast_weights=s.back_copies, **values, **s.parallel("backward_layer", s.layer))
    last_layer.__doc__ = f"The last layer's backward: {part.__name__.strip('_').replace('_', ' ')}."
    return last_layer


def _first_layer(part):
    """The first layer's moment of ``part``."""
    def first_layer(s: Step):
        values = part(s.first_view)
        if values is None:
            return None
        return dict(**s.persistent, grads=s.made, activations__input_leaf=s.leaf, **values,
                    **s.parallel("backward_end", 0))
    first_layer.__doc__ = f"The first layer's backward, every gradient made: {part.__name__.strip('_').replace('_', ' ')}."
    return first_layer


def _recompute_softmax_part(s: Step):
    """With checkpointing, the recomputation reaching eager attention's softmax: what the layer
    kept before attention, attention's saved set but its scores, the forward's locals and score
    tensors (layer.eager_forward_moment), beside the gradients in flight. It outgrows the softmax
    backward where the forward holds as many score tensors as the backward (attention with sinks,
    terms.sink_softmax: the recomputed layer's sum, cat and sub at the peak, tracer gpt-oss-20b
    2 layers, QLoRA, batch 1 x 8192)."""
    if not s.gc:
        return None
    eager = s._last(M.eager_forward_moment, recompute=True)
    if not eager.working:
        return None
    in_flight = s.in_flight + s._last(C.moe_pair_gradient)
    return dict(transient__recompute=eager.live + eager.before + eager.locals + in_flight,
                transient__attention=eager.working)


moment("backward", "layer_recompute")(_last_layer(_recompute_part))
moment("backward", "layer_recompute_softmax")(_last_layer(_recompute_softmax_part))
moment("backward", "layer_recompute_module")(_last_layer(_recompute_module_part))
moment("backward", "layer_recompute_experts")(_last_layer(_recompute_experts_part))
moment("backward", "layer_recompute_down")(_last_layer(_recompute_down_part))
moment("backward", "layer_dequant")(_last_layer(_dequant_part))
moment("backward", "layer_moe")(_last_layer(_moe_part))


@moment("backward", "layer_experts_grads")
def _layer_experts_grads(s: Step):
    """Full fine-tuning without checkpointing: the last layer's experts once their weight
    gradients are formed, its saved set but what its backward has freed (terms.moe_full_backward_moment)."""
    freed, made, work = s._last(C.moe_full_backward_moment)
    if not made or not S.strategy(s.train).whole_gradients:
        return None
    return dict(**s.persistent, grads=s.head_grads + made, activations__saved=s.saved - s.final_norm - freed,
                activations__autocast_weights=s.back_copies, transient__moe_backward=work,
                **s.parallel("backward_layer", s.layer))


@moment("backward", "layer_dora")
def _layer_dora(s: Step):
    """An adapted module's own backward in the last layer (DoRA's fp32 gradients)."""
    kept, workspace = s._last(M.adapter_backward_moment)
    # (with checkpointing: the recomputed module's DoRA output, the final norm's input freed and
    # the gradients made before the recomputation in flight)
    return dict(**s.persistent, grads=s.head_grads,
                activations__saved=s.saved - s.final_norm if s.gc else s.saved - s.per_layer + kept,
                activations__autocast_weights=s.back_copies, transient__recompute=kept + s.in_flight if s.gc else 0,
                transient__dora_backward=workspace, **s.parallel("backward_layer", s.layer))


@moment("backward", "layer_softmax")
def _layer_softmax_backward(s: Step):
    """Eager attention's softmax backward in the last layer."""
    kept, work = s.softmax_back
    saved = s.saved - s.final_norm - (0 if s.gc else s.per_layer - kept)
    return dict(**s.persistent, grads=s.head_grads, activations__saved=saved, activations__autocast_weights=s.back_copies,
                transient__recompute=(kept + s.in_flight) if s.gc else 0, transient__attention=work,
                **s.parallel("backward_layer", s.layer))


def _softmax_part(s: Step):
    kept, work = s.softmax_back
    if s.gc:
        return dict(transient__recompute=kept + s.in_flight, transient__attention=work)
    return dict(activations__saved=kept, transient__attention=work)


def _own_grads(s: Step, first: Step) -> tuple[str, int, int]:
    """Where a first-layer moment counts the gradients of ``first``'s layer, and their bytes: all
    of them, and its attention block's (inventory.attention_block): in ``grads`` where gradients
    are whole (one GPU, DDP), in FSDP's unsharded ``parallel__reduce_scatter`` (in the gradient
    dtype), else nowhere apart (ZeRO's partitions: 0)."""
    strategy = S.strategy(s.train)
    if strategy.whole_gradients:
        return "grads", first.layer_grads, first.attention_grads
    if isinstance(strategy, S.FSDP):
        g = S.grad_bytes(s.train, s.prec)
        return ("parallel__reduce_scatter", sum(t.elements for t in first._layer_tensors) * g,
                sum(t.elements for t in inv.attention_block(first._kind.layer, first._layer_tensors)) * g)
    return "grads", 0, 0


def _less(values: dict, key: str, amount: int) -> dict:
    return dict(values, **{key: values[key] - amount})


@moment("backward", "first_layer_recompute")
def _first_layer_recompute(s: Step):
    """The first layer's recomputed saved set and its backward, where the walk does not serve
    (:func:`_first_layer_walk`): the larger of two blocks, beside every other gradient made. The
    MLP (or experts) block: the whole recomputed set beside its own gradients; the attention block:
    the set but what the layer saved after attention (terms.saved_after_attention), freed by then,
    beside all of the layer's gradients (:func:`_own_grads`; tracer, DeepSeek-V3.2 2 layers, full
    bf16 pure with checkpointing, batch 1 x 2048: the plan was 1.8% over with every layer
    gradient beside the whole set)."""
    if s.walk and s.gc:
        return None
    first = s.first_view
    whole = _recompute_part(first)["transient__recompute"]
    attention = whole - first._last(C.saved_after_attention) if s.gc else whole
    key, own, attention_grads = _own_grads(s, first)
    values = dict(**s.persistent, grads=s.made, activations__input_leaf=s.leaf, **s.parallel("backward_end", 0))
    return max(_less(dict(values, transient__recompute=whole), key, attention_grads),
               dict(values, transient__recompute=attention), key=lambda v: sum(v.values()))


@moment("backward", "first_layer_recompute_module")
def _first_layer_recompute_module(s: Step):
    """The first layer's recomputation inside a module (:func:`_recompute_module_part`): before
    its backward has made any of its own gradients (where gradients are whole), or, for the part
    of the module's working set that its backward needs again (a 4-bit weight's dequantization,
    DoRA's), in that backward, beside every gradient made. A module with no backward (DeepSeek-V3.2's
    indexer, run under no_grad: its scoring, ``transient__attention``) only in the recomputation
    (tracer, DeepSeek-V3.2 2 layers, full bf16 pure with checkpointing, batch 1 x 2048: the plan
    was 1.8% over with layer 0's gradients beside the indexer's recomputed scoring)."""
    values = None if s.walk and s.gc else _recompute_module_part(s.first_view)
    if values is None:
        return None
    own = s.first_view.layer_grads if S.strategy(s.train).whole_gradients else 0
    out = dict(**s.persistent, grads=s.made, activations__input_leaf=s.leaf, **values, **s.parallel("backward_end", 0))
    return max(dict(out, grads=s.made - own), dict(out, transient__attention=0), key=lambda v: sum(v.values()))


moment("backward", "first_layer_recompute_down")(_first_layer(_recompute_down_part))
moment("backward", "first_layer_dequant")(_first_layer(_dequant_part))


def _first_experts_layer(part):
    """The first layer with experts' moment of ``part``, every gradient made but this layer's
    own, which its backward makes after the experts' and after its recomputation (one GPU and
    DDP; tracer, OLMoE-1B-7B and Qwen3-30B-A3B 2 layers, LoRA all-linear with checkpointing,
    batch 2 x 512: layer 0's expert factor gradients, 44 MiB for OLMoE, not yet there at the
    backward peak; the plan was 1.4% over with them)."""
    def first_layer(s: Step):
        # the first layer with experts (Llama 4 Maverick's first layer is dense: its second), every
        # gradient made but its own and those of the dense layers before it
        index = min(k.indices[0] for k in s.model.kinds if k.layer.moe is not None) if s.model.moe is not None else 0
        first = replace(s, layer=index) if index else s.first_view
        values = part(first)
        if values is None:
            return None
        pending = (sum(replace(s, layer=j).layer_grads for j in range(index + 1))
                   if S.strategy(s.train).whole_gradients else 0)
        out = dict(**s.persistent, grads=s.made - pending, activations__input_leaf=s.leaf if not index else 0,
                   **values, **s.parallel("backward_end", index))
        key, _, attention = _own_grads(s, first)
        # FSDP: the layer's unsharded gradients, its experts' at most, its attention's made later
        # (tracer, Qwen3-30B-A3B 2 layers, full bf16 autocast with checkpointing on 4 GPUs,
        # batch 1 x 512: no attention gradient at the backward peak, 36 MiB of the plan's 0.94% over)
        return _less(out, key, attention) if key != "grads" else out
    first_layer.__doc__ = f"The first layer with experts: {part.__name__.strip('_').replace('_', ' ')}."
    return first_layer


# the experts' backward (LoRA on fused experts: the workspace of its kind's down weight gradient)
# and the recomputation inside them
moment("backward", "first_layer_moe")(_first_experts_layer(_moe_part))
moment("backward", "first_layer_recompute_experts")(_first_experts_layer(_recompute_experts_part))
moment("backward", "first_layer_softmax")(_first_layer(_softmax_part))


WALK = ("recompute", "saved", "down", "mlp", "mlp_input", "norm", "o", "attention", "attention_input")


@moment("backward", "first_layer_walk", family=tuple(f"first_layer_{name}" for name in WALK))
def _first_layer_walk(s: Step):
    """Full fine-tuning's first layer backward walked block by block
    (layer.first_layer_backward_walk): each block's moment, its saved set still kept and its
    workspace beside the gradients made, the layer's own not made yet left out: from the
    unsharded gradients in flight under FSDP (its reduce_scatter term), else from the
    gradients made."""
    if not s.walk:
        return None
    out = []
    for name, kept, pending, work in s.walk:
        terms = s.parallel("backward_end", 0)
        grads = s.made
        if isinstance(S.strategy(s.train), S.FSDP):
            terms = dict(terms, parallel__reduce_scatter=terms["parallel__reduce_scatter"] - pending)
        else:
            grads -= pending
        out.append((f"first_layer_{name}", dict(**s.persistent, grads=grads, activations__saved=kept,
                                                transient__recompute=work, **terms)))
    return out


@moment("backward", "embedding")
def _embedding(s: Step):
    """The input embedding's backward, after every layer's (a tied one's gradient beside
    lm_head's and their sum)."""
    return dict(**s.persistent, grads=S.strategy(s.train).grads_at_embedding(s.model, s.train, s.prec, s.end_grads),
                transient__embedding_backward=s._term(C.embedding_backward_workspace),
                **s.parallel("embedding_backward", 0))


@moment("backward", "layer_unsharded")
def _layer_unsharded_backward(s: Step):
    """Several GPUs: the start of the last layer's backward, its parameters copied out of the
    all-gather buffer, which exists until the copy is done, beside every activation kept
    (tracer, GLM-4.5-Air cut to 2 dense + 1 MoE layers, LoRA on 2 GPUs: the MoE layer's
    4.5 GiB buffer beside its unsharded parameters at the backward peak)."""
    if not s.train.parallel:
        return None
    return dict(**s.persistent, activations__saved=s.saved - s.final_norm,
                activations__autocast_weights=0 if s.gc else s.back_copies, **s.parallel("backward_start", s.layer))


@moment("backward", "layer_end")
def _layer_end(s: Step):
    """Under FSDP, the end of a layer's backward (every layer after the first; the first's is
    :func:`_first_layer_walk`'s): its gradients (and lm_head's) made whole, not yet
    reduce-scattered, beside the later layers' gradient shards, the earlier layers' saved
    sets and the previous layer's prefetched buffer. Where a later layer's kind is the larger
    (a MoE layer after a dense first layer) this, not the first layer's, is backward's peak
    (tracer, GLM-4.5-Air cut to 2 dense + 1 MoE layers, full fine-tuning on 2 GPUs: the MoE
    layer's [128, 2816, 4096] and [128, 4096, 1408] gradients and lm_head's [151552, 4096] at
    the backward peak; cut to 1 dense + 2 MoE layers, the middle one's, beside the last one's
    reduce-scatter input and gradient shards). The largest of these moments."""
    model, n = s.model, s.model.num_layers
    if S.strategy(s.train).whole_gradients or n < 2 or S.fsdp_offloaded(s.train):
        return None
    if s.gc and len(model.kinds) == 1:
        # with checkpointing and every layer alike the first layer's walk is the larger (tracer,
        # tiny Phi-3 full on 2 GPUs, checkpointing: the walk equals the trace to the byte, this
        # moment 0.4% above it)
        return None
    g = S.grad_bytes(s.train, s.prec)
    kept = [C.layer_saved(model.kind_view(j), s.train, s.prec) for j in range(n)]
    options = []
    for layer in range(1, n):
        saved = s.saved - s.final_norm - (0 if s.gc else sum(kept[layer:]))
        grads = S.fsdp_layer_shards(model, s.train, g, range(layer + 1, n))
        terms = s.parallel("backward_end", layer)
        options.append(dict(**s.persistent, grads=grads, activations__saved=saved, **terms))
        # full fine-tuning: the layer's backward walked block by block, as the first layer's
        # (its own saved set partly kept, its gradients partly made), beside the earlier layers'
        # saved sets (tracer, EXAONE-4.0-32B cut to 4 layers, full fp32 on 2 GPUs: a middle
        # layer's MLP backward beside two layer-sized buffers and lm_head's gradient)
        for _, kept_now, pending, work in M.first_layer_backward_walk(model.kind_view(layer), s.train, s.prec):
            options.append(dict(**s.persistent, grads=grads, activations__saved=saved + kept_now,
                                transient__recompute=work,
                                **dict(terms, parallel__reduce_scatter=terms["parallel__reduce_scatter"] - pending)))
    return max(options, key=lambda v: sum(v.values()))


@moment("backward", "first_layer_saved")
def _first_layer_saved(s: Step):
    """Several GPUs without checkpointing: the first layer's backward, its saved set beside the
    gradients in flight."""
    if not (s.train.parallel and not s.gc) or s.walk:
        return None
    return dict(**s.persistent, grads=s.made, activations__saved=s.per_layer, **s.parallel("backward_end", 0))


@moment("backward", "lm_head")
def _lm_head(s: Step):
    """A trained lm_head's backward: its gradients beside every activation
    (terms.lm_head_backward; the larger of its moments)."""
    options = [dict(**s.persistent, activations__saved=s.saved, grads=weight_grads,
                    activations__autocast_weights=(0 if s.gc else s.back_copies) + copy,
                    activations__logits=logit_grads)
               for weight_grads, logit_grads, copy in s._term(C.lm_head_backward)]
    return max(options, key=lambda v: sum(v.values())) if options else None


# ---------------------------------------------------------------- optimizer

@moment("optimizer", "step")
def _optimizer_step(s: Step):
    """optimizer.step(): every gradient and the optimizer's temporaries."""
    return dict(**s.persistent, grads=s.grads, activations__input_leaf=s.leaf,
                optimizer__transient=s.opt_transient, **s.parallel("optimizer", 0))


# The moments of one step a plan can peak at, by phase, in the order they are compared.
MOMENTS = {phase: tuple(dict.fromkeys(member for name, _ in moments for member in (FAMILIES[name] or (name,))))
           for phase, moments in REGISTRY.items()}


# Which parallel terms are live at which moment of the step (planner.memory.sharding): the
# root unit, how many times (from forward to the end of backward); the layers' terms by the
# layers that hold them, as offsets from the layer the moment is in (the moment's ``layer``):
# the running layer's all-gathered parameters inside a layer; FSDP's all-gather buffers (in
# forward the last one lingers until the next copy-out: the running layer's own, and the
# previous layer's too while the last layer is unsharded, before it runs; in backward a layer
# prefetches the one before it, whose buffer is live while it runs; tracer) or ZeRO-3's
# prefetch bucket; gradients not yet reduced at the end of backward (the running layer's and,
# full fine-tuning under FSDP, the root's);
# DDP's buckets always. A model whose layer kinds differ (a dense first layer before the MoE
# layers) all-gathers each layer at its own kind's size (tracer, DeepSeek-V3 cut to a dense and
# a MoE layer, LoRA on 4 GPUs: the MoE layer's backward beside the dense layer's 1.09 GiB
# prefetched buffer, not a MoE layer's 21.7 GiB).
_LIVE = {
    "at_loss": {"unsharded_root": 1, "prefetch": (0,)},
    "layer_start": {"unsharded_root": 1, "unsharded_layer": (0,), "prefetch": (0, -1)},
    # the root's buffer (its all-gather output, root-sized) is the lingering one here (tracer,
    # Llama-2-70B cut to 2 layers, QLoRA on 2 GPUs: two root + layer sized sets at the forward peak)
    "first_layer": {"unsharded_root": 2, "unsharded_layer": (0,), "prefetch": (0,)},
    "in_layer": {"unsharded_root": 1, "unsharded_layer": (0,), "prefetch": (0,)},
    "backward_layer": {"unsharded_root": 1, "unsharded_layer": (0,), "prefetch": (-1,)},
    # a layer's backward, every later layer's gradients made: the previous layer's prefetched
    # buffer and the next layer's reduce-scatter input, which FSDP2 keeps until the next
    # reduce-scatter (counted at the next layer's whole size: full fine-tuning's gradients are
    # that; an adapter's are far smaller, a bound); the first layer has no previous one, the last
    # no next one (offsets outside the model are no layer; tracer, GLM-4.5-Air cut to a dense
    # and two MoE layers, full fine-tuning on 2 GPUs: the dense first layer's backward beside
    # the MoE layer's 4.36 GiB reduce-scatter input, no prefetched buffer)
    "backward_end": {"unsharded_root": 1, "unsharded_layer": (0,), "prefetch": (-1, 1), "reduce_scatter": (0,)},
    # the copy-out at the start of a layer's backward: its buffer until the copy is done
    "backward_start": {"unsharded_root": 1, "unsharded_layer": (0,), "prefetch": (0,)},
    # a tied embedding's backward, after the first layer's: the root's gradients only
    "embedding_backward": {"unsharded_root": 1, "prefetch": (0,), "root_grads": 1},
    "optimizer": {},
}
_LAYER_TERMS = ("unsharded_layer", "prefetch", "reduce_scatter")


def _per_gpu(model: ModelSpec, train: TrainSpec, prec: C.Precision, persistent: dict[str, int], grads: int,
             opt_transient: int):
    """One rank's persistent state, gradients (at the optimizer step, and at the end of
    backward) and optimizer transient under its sharding strategy (planner.memory.sharding),
    and the parallel terms live at each moment (a function of the moment's name and the layer
    it is in, :data:`_LIVE`)."""
    strategy = S.strategy(train)
    state = strategy.rank_state(model, train, prec, S.RankState(persistent, grads, grads, opt_transient))
    kinds = {k.name: strategy.terms(model, train, prec, k.name) for k in model.kinds}
    kind_of = {i: k.name for k in model.kinds for i in k.indices}
    terms = next(iter(kinds.values()))  # the root's terms, whatever the kind
    n = model.num_layers

    def parallel(moment: str, layer: int) -> dict[str, int]:
        layer %= n
        live = _LIVE[moment]
        out = {"parallel__unsharded_root": terms["unsharded_root"] * live.get("unsharded_root", 0)}
        for k in _LAYER_TERMS:
            out[f"parallel__{k}"] = sum(kinds[kind_of[layer + offset]][k] for offset in live.get(k, ())
                                        if 0 <= layer + offset < n)
        out["parallel__reduce_scatter"] += terms["root_grads"] * live.get("root_grads", 0)
        out["parallel__grad_buckets"] = terms["grad_buckets"]
        return out

    return state.persistent, state.grads, state.end_grads, state.opt_transient, parallel
