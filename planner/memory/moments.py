"""How the components live through the phases of one training step.

The peak is the max over phases of what is live in each, not the sum of all components
(docs/design.md, "Phases"). A phase is an ordered breakdown {component name: bytes}; every
method (full, lora, rslora, qlora, dora, qdora) goes through the same three phases, and the
method only changes which components are non-zero (see planner.memory.terms).

- forward: the end of forward, at the loss: persistent state, every saved activation, the
  logits and their fp32 copies. Per-layer transients (dequantized 4-bit weights, DoRA's
  dense norm computation) of the last layer coincide with almost all saved activations.
- backward: the start of backward (logits gradients while every activation is still
  alive), or its end (all gradients, the first layer's recomputation and transients).
- optimizer: persistent state, every gradient and the optimizer's temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.memory import terms as C
from planner.memory import layer as M
from planner.memory import sharding as S
from planner.model import counts
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


# The moments of one step a plan can peak at, by phase: each is one named breakdown in
# step_memory, and the plan reports which one peaked (peak_moment).
MOMENTS = {
    "forward": ("loss", "layer_module", "layer_softmax", "last_layer_unsharded", "first_layer_unsharded"),
    "backward": ("logits_grad", "lm_head", "layer_recompute", "layer_recompute_module", "layer_dequant", "layer_moe",
                 "layer_dora", "layer_softmax", "first_layer_recompute", "first_layer_recompute_module",
                 "first_layer_dequant", "first_layer_moe", "first_layer_softmax", "embedding",
                 "first_layer_saved"),
    "optimizer": ("step",),
}


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


def _largest(moments) -> Moment:
    """The moment with the most live bytes (the first of equals)."""
    return max(moments, key=_total)


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


@lru_cache(maxsize=4096)
def step_memory(model: ModelSpec, train: TrainSpec, dtype: str) -> StepMemory:
    """The three phases of one measured (post warm-up) step for any method (cached: the GPU
    enters only through ``dtype``, so every GPU of one dtype shares it; read-only)."""
    prec = C.precision(train, dtype)
    persistent = dict(
        weights__base=C.weights_base(model, train, prec),
        weights__quant_state=C.weights_quant_state(model, train),
        adapters__params=C.adapter_bytes(model, train),
        adapters__modules=C.saved_module_bytes(model, train, prec),
        optimizer__states=C.optimizer_states(model, train, prec),
    )
    saved = C.activations_saved(model, train, prec)
    layer_copies = C.autocast_weight_copies(model, train, prec)
    head_copy = C.lm_head_autocast_copy(model, train, prec)
    copies = layer_copies + head_copy
    back_copies = C.backward_autocast_copies(model, train, prec)
    fwd = M.layer_transient(model, train, prec)
    rec = M.layer_transient(model, train, prec, recompute=True)
    final_norm = C.norm_saved(model, train, prec)  # not run yet in the layers' forward
    grads = C.grads(model, train, prec)
    per_layer = C.layer_saved(model, train, prec)
    recompute = C.recompute_transient(model, train, prec)
    in_flight = C.recompute_incoming_grads(model, train, prec)
    gc = train.gradient_checkpointing
    opt_transient = C.optimizer_transient(model, train, prec)
    extra = lambda moment: {}  # noqa: E731 - one GPU: no parallel terms
    end_grads = grads
    if train.parallel:
        persistent, grads, end_grads, opt_transient, extra = _per_gpu(model, train, prec, persistent, grads,
                                                                      opt_transient)

    # Forward: the loss moment, or the last layer's worst per-module transient (before
    # lm_head has run). That layer has kept only what came before the module; a
    # checkpointed layer keeps nothing during its forward.
    at_loss = _breakdown("loss", **persistent, activations__saved=saved, activations__autocast_weights=copies,
                         activations__logits=C.logits_forward(model, train, prec), **extra("at_loss"))
    in_layer_saved = saved - final_norm + fwd.live + (0 if gc else fwd.before - per_layer)
    in_layer = _breakdown("layer_module", **persistent, activations__saved=in_layer_saved, activations__autocast_weights=layer_copies,
                          transient__module=fwd.locals + fwd.working, transient__dequant=fwd.dequant,
                          transient__dora=fwd.dora, **extra("in_layer"))
    eager = M.eager_forward_moment(model, train, prec)
    at_softmax = _breakdown("layer_softmax", **persistent, activations__saved=saved - final_norm + eager.live + eager.before
                            + (0 if gc else -per_layer), activations__autocast_weights=layer_copies,
                            transient__module=eager.locals, transient__attention=eager.working, **extra("in_layer"))
    forward = _largest((at_loss, in_layer, at_softmax))
    if train.parallel:  # the last layer being unsharded: what the earlier layers kept, two all-gather buffers
        start_saved = saved - final_norm - (0 if gc else per_layer)
        forward = _largest((forward, _breakdown("last_layer_unsharded", **persistent, activations__saved=start_saved,
                                                activations__autocast_weights=layer_copies, **extra("layer_start"))))
        # the first layer being unsharded: the root's all-gather buffer still lingers beside the
        # root's and the layer's parameters and the layer's buffer; only the embedding output exists
        embedded = train.tokens * model.hidden_size * prec.stream
        forward = _largest((forward, _breakdown("first_layer_unsharded", **persistent, transient__module=embedded, **extra("first_layer"))))

    # Backward start: logits gradients with every activation still kept. Full fine-tuning's
    # first gradient (lm_head, or the tied embedding at the end) is small beside them.
    start = _breakdown("logits_grad", **persistent, activations__saved=saved,
                       activations__autocast_weights=(0 if gc else back_copies) + head_copy,
                       activations__logits=C.logits_backward(model, train, prec), **extra("at_loss"))
    # The last layer's backward: with checkpointing its recomputation (the whole layer, or the
    # part before the worst per-module transient, with that transient) while the other
    # layers' inputs are still kept (lm_head's copy is gone by then).
    # Without checkpointing no forward runs again: only bitsandbytes' backward dequantizes.
    moments = [("recompute", dict(transient__recompute=recompute + in_flight + M.recompute_stop_extra(model, train, prec))),
               ("recompute_module", dict(transient__recompute=rec.live + rec.before + rec.locals + in_flight,
                                         transient__dequant=rec.dequant, transient__dora=rec.dora)) if gc
               else ("dequant", dict(transient__dequant=C.dequant_transient(model, train, prec)))]
    moe_back = C.moe_backward_workspace(model, train, prec)
    if moe_back:
        moments.append(("moe", dict(transient__recompute=recompute + in_flight if gc else 0,
                                    transient__moe_backward=moe_back)))
    kept, workspace = M.adapter_backward_moment(model, train, prec)
    dora_back = _breakdown("layer_dora", **persistent, activations__saved=saved if gc else saved - per_layer + kept,
                           activations__autocast_weights=back_copies, transient__recompute=kept if gc else 0,
                           transient__dora_backward=workspace, **extra("backward_layer"))
    softmax_kept, softmax_work = M.eager_backward_moment(model, train, prec)
    softmax_back = _breakdown("layer_softmax", **persistent, activations__saved=saved - final_norm - (0 if gc else per_layer - softmax_kept),
                              activations__autocast_weights=back_copies,
                              transient__recompute=(softmax_kept + in_flight) if gc else 0,
                              transient__attention=softmax_work, **extra("backward_layer"))
    top = _largest([_breakdown(f"layer_{name}", **persistent, activations__saved=saved - final_norm,
                               activations__autocast_weights=back_copies, **m, **extra("backward_layer"))
                    for name, m in moments] + [dora_back, softmax_back])
    # Backward end: all gradients, the first layer's recomputation and transients.
    leaf = C.checkpoint_input_leaf(model, train, prec)
    # (the first layer's eager softmax backward, every later gradient made: what full fine-tuning peaks at)
    moments.append(("softmax", dict(transient__recompute=softmax_kept + in_flight, transient__attention=softmax_work)
                    if gc else dict(activations__saved=softmax_kept, transient__attention=softmax_work)))
    # in the first layer's backward every gradient exists but the trained embedding's, made last
    # (one GPU, and DDP, whose gradients are whole; a sharded embedding's gradient is the parallel terms')
    made = end_grads if train.sharding not in ("none", "ddp") else grads - C.embedding_grad_pending(model, train, prec)
    end = _largest([_breakdown(f"first_layer_{name}", **persistent, grads=made, activations__input_leaf=leaf, **m,
                               **extra("backward_end"))
                    for name, m in moments]
                   + [_breakdown("embedding", **persistent, grads=_grads_at_embedding(model, train, prec, end_grads),
                                 transient__embedding_backward=C.embedding_backward_workspace(
                       model, train, prec), **extra("embedding_backward"))])
    if train.parallel and not gc:  # the first layer's backward: its saved set beside the gradients in flight
        end = _largest((end, _breakdown("first_layer_saved", **persistent, grads=made, activations__saved=per_layer,
                                        **extra("backward_end"))))
    # A trained lm_head's backward: its gradients beside every activation (terms.lm_head_backward)
    head = [_breakdown("lm_head", **persistent, activations__saved=saved, grads=weight_grads,
                       activations__autocast_weights=(0 if gc else back_copies) + copy, activations__logits=logit_grads)
            for weight_grads, logit_grads, copy in C.lm_head_backward(model, train, prec)]
    backward = _largest((start, top, end, *head))

    optimizer = _breakdown("step", **persistent, grads=grads, activations__input_leaf=leaf,
                           optimizer__transient=opt_transient, **extra("optimizer"))
    chosen = {"forward": forward, "backward": backward, "optimizer": optimizer}
    return StepMemory(phases={phase: m.terms for phase, m in chosen.items()},
                      paged_optimizer_bytes=C.optimizer_states_paged(model, train, prec),
                      moments={phase: m.name for phase, m in chosen.items()})


# Which parallel terms are live at which moment of the step, and how many of each
# (planner.memory.sharding): the root unit from forward to the end of backward; the running layer's
# all-gathered parameters inside a layer; FSDP's all-gather buffers (the last one lingers until
# the next copy-out: one at the loss, when backward starts and inside a layer, two when the last
# layer is unsharded beside the previous one's buffer, before it runs; tracer) or ZeRO-3's prefetch bucket; gradients not yet
# reduced at the end of backward; DDP's buckets always.
_LIVE = {
    "at_loss": {"unsharded_root": 1, "prefetch": 1},
    "layer_start": {"unsharded_root": 1, "unsharded_layer": 1, "prefetch": 2},
    # the root's buffer (its all-gather output, root-sized) is the lingering one here (tracer,
    # Llama-2-70B cut to 2 layers, QLoRA on 2 GPUs: two root + layer sized sets at the forward peak)
    "first_layer": {"unsharded_root": 2, "unsharded_layer": 1, "prefetch": 1},
    "in_layer": {"unsharded_root": 1, "unsharded_layer": 1, "prefetch": 1},
    "backward_layer": {"unsharded_root": 1, "unsharded_layer": 1, "prefetch": 1},
    "backward_end": {"unsharded_root": 1, "unsharded_layer": 1, "prefetch": 1, "reduce_scatter": 1},
    # a tied embedding's backward, after the first layer's: the root's gradients only
    "embedding_backward": {"unsharded_root": 1, "prefetch": 1, "root_grads": 1},
    "optimizer": {},
}


def _grads_at_embedding(model: ModelSpec, train: TrainSpec, prec: C.Precision, end_grads: int) -> int:
    """The gradients there while the input embedding's backward runs, after every layer's:
    ``end_grads`` (all of them on one GPU and under DDP), or under FSDP every layer's shard
    (planner.sharding.fsdp_grads_after_layers: the first layer's is reduced by then)."""
    if train.sharding != "fsdp" or S.fsdp_offloaded(train):
        return end_grads
    return S.fsdp_grads_after_layers(model, train, C.trainable_bytes_per_param(train, prec))


def _per_gpu(model: ModelSpec, train: TrainSpec, prec: C.Precision, persistent: dict[str, int], grads: int,
             opt_transient: int):
    """One rank's persistent state, gradients (at the optimizer step, and at the end of
    backward), optimizer transient under ``train.sharding``, and the parallel terms live at each
    moment (a function of the moment's name)."""
    grad_bytes = C.trainable_bytes_per_param(train, prec)
    n = train.num_gpus
    layer_packed = C.packed_layer_bytes(model) if train.is_quantized else 0
    persistent = dict(persistent)
    end_grads = grads
    if train.sharding == "fsdp":
        trainable = S.trainable_tensors(model, train)
        offloaded = S.fsdp_offloaded(train)
        for key, tensors in (("weights__base", S.base_tensors(model)),
                             ("adapters__params", S.adapter_tensors(model, train)),
                             ("optimizer__states", trainable)):
            persistent[key] = 0 if offloaded else S.shard_fraction_bytes(persistent[key], tensors, n)
        grads = 0 if offloaded else S.shard_fraction_bytes(grads, trainable, n)
        end_grads = 0 if offloaded else S.fsdp_grads_at_backward_end(model, train, grad_bytes)
        opt_transient = 0 if offloaded else S.shard_fraction_bytes(opt_transient, trainable, n)
    elif train.sharding in ("zero2", "zero3"):
        base = persistent["weights__base"] if train.is_quantized else counts.total_params(model) * prec.compute
        states = S.zero_model_states(model, train, base, prec.compute)
        persistent.update(weights__base=states["weights/base"], adapters__params=states["adapters/params"],
                          optimizer__states=states["optimizer/states"])
        grads = end_grads = states["grads"]
        opt_transient = states["optimizer/transient"]
    terms = {
        "unsharded_root": S.unsharded_root(model, train, prec.weight),
        "unsharded_layer": S.unsharded_layer(model, train, prec.weight, layer_packed),
        "prefetch": S.fsdp_prefetch(model, train, prec.weight, layer_packed),
        "reduce_scatter": S.fsdp_reduce_scatter(model, train, grad_bytes),
    }
    buckets = S.ddp_grad_buckets(model, train, grad_bytes)
    root_grads = S.fsdp_root_grads(model, train, grad_bytes)

    def extra(moment: str) -> dict[str, int]:
        live = _LIVE[moment]
        out = {f"parallel__{k}": v * live.get(k, 0) for k, v in terms.items()}
        out["parallel__reduce_scatter"] += root_grads * live.get("root_grads", 0)
        out["parallel__grad_buckets"] = buckets
        return out

    return persistent, grads, end_grads, opt_transient, extra
