"""How the components live through the phases of one training step.

The peak is the max over phases of what is live in each, not the sum of all components
(docs/design.md, "Phases"). A phase is an ordered breakdown {component name: bytes}; every
method (full, lora, rslora, qlora, dora, qdora) goes through the same three phases, and the
method only changes which components are non-zero (see planner.components).

- forward: the end of forward, at the loss: persistent state, every saved activation, the
  logits and their fp32 copies. Per-layer transients (dequantized 4-bit weights, DoRA's
  dense norm computation) of the last layer coincide with almost all saved activations.
- backward: the start of backward (logits gradients while every activation is still
  alive), or its end (all gradients, the first layer's recomputation and transients).
- optimizer: persistent state, every gradient and the optimizer's temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import components as C
from . import moments as M
from .specs import ModelSpec, TrainSpec

from .units import PHASES

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


@dataclass(frozen=True)
class StepMemory:
    """The live bytes of each phase of one training step, as named breakdowns."""

    phases: dict[str, dict[str, int]]
    paged_optimizer_bytes: int

    def total(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.total)

    @property
    def peak_bytes(self) -> int:
        return self.total(self.peak_phase)


def _largest(breakdowns) -> dict[str, int]:
    """The breakdown with the most live bytes."""
    return max(breakdowns, key=lambda b: sum(b.values()))


_KNOWN = frozenset(COMPONENT_KEYS)


def _breakdown(**values: int) -> dict[str, int]:
    """A phase's breakdown over every component key (``weights__base`` names
    ``weights/base``); a name that is not a component key is a bug, refused."""
    out = dict.fromkeys(COMPONENT_KEYS, 0)
    for key, value in values.items():
        name = key.replace("__", "/")
        if name not in _KNOWN:
            raise KeyError(f"{name!r} is not a component key (planner.methods.COMPONENT_KEYS)")
        out[name] = value
    return out


def step_memory(model: ModelSpec, train: TrainSpec, dtype: str) -> StepMemory:
    """The three phases of one measured (post warm-up) step for any method."""
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

    # Forward: the loss moment, or the last layer's worst per-module transient (before
    # lm_head has run). That layer has kept only what came before the module; a
    # checkpointed layer keeps nothing during its forward.
    at_loss = _breakdown(**persistent, activations__saved=saved, activations__autocast_weights=copies,
                         activations__logits=C.logits_forward(model, train, prec))
    in_layer_saved = saved - final_norm + fwd.live + (0 if gc else fwd.before - per_layer)
    in_layer = _breakdown(**persistent, activations__saved=in_layer_saved, activations__autocast_weights=layer_copies,
                          transient__module=fwd.locals + fwd.working, transient__dequant=fwd.dequant,
                          transient__dora=fwd.dora)
    eager = M.eager_forward_moment(model, train, prec)
    at_softmax = _breakdown(**persistent, activations__saved=saved - final_norm + eager.live + eager.before
                            + (0 if gc else -per_layer), activations__autocast_weights=layer_copies,
                            transient__module=eager.locals, transient__attention=eager.working)
    forward = _largest((at_loss, in_layer, at_softmax))

    # Backward start: logits gradients with every activation still kept. Full fine-tuning's
    # first gradient (lm_head, or the tied embedding at the end) is small beside them.
    start = _breakdown(**persistent, activations__saved=saved,
                       activations__autocast_weights=(0 if gc else back_copies) + head_copy,
                       activations__logits=C.logits_backward(model, train, prec))
    # The last layer's backward: with checkpointing its recomputation (the whole layer, or the
    # part before the worst per-module transient, with that transient) while the other
    # layers' inputs are still kept (lm_head's copy is gone by then).
    # Without checkpointing no forward runs again: only bitsandbytes' backward dequantizes.
    moments = [dict(transient__recompute=recompute + in_flight + M.recompute_stop_extra(model, train, prec)),
               dict(transient__recompute=rec.live + rec.before + in_flight, transient__dequant=rec.dequant,
                    transient__dora=rec.dora) if gc
               else dict(transient__dequant=C.dequant_transient(model, train, prec))]
    moe_back = C.moe_backward_workspace(model, train, prec)
    if moe_back:
        moments.append(dict(transient__recompute=recompute + in_flight if gc else 0, transient__moe_backward=moe_back))
    kept, workspace = M.dora_backward_moment(model, train, prec)
    dora_back = _breakdown(**persistent, activations__saved=saved if gc else saved - per_layer + kept,
                           activations__autocast_weights=back_copies, transient__recompute=kept if gc else 0,
                           transient__dora_backward=workspace)
    kept, workspace = M.eager_backward_moment(model, train, prec)
    softmax_back = _breakdown(**persistent, activations__saved=saved - final_norm - (0 if gc else per_layer - kept),
                              activations__autocast_weights=back_copies, transient__recompute=(kept + in_flight) if gc else 0,
                              transient__attention=workspace)
    top = _largest([_breakdown(**persistent, activations__saved=saved - final_norm, activations__autocast_weights=back_copies, **m)
                    for m in moments] + [dora_back, softmax_back])
    # Backward end: all gradients, the first layer's recomputation and transients.
    leaf = C.checkpoint_input_leaf(model, train, prec)
    # (the first layer's eager softmax backward, every later gradient made: what full fine-tuning peaks at)
    moments.append(dict(transient__recompute=kept + in_flight, transient__attention=workspace) if gc
                   else dict(activations__saved=kept, transient__attention=workspace))
    # in the first layer's backward every gradient exists but the trained embedding's, made last
    made = grads - C.embedding_grad_pending(model, train, prec)
    end = _largest([_breakdown(**persistent, grads=made, activations__input_leaf=leaf, **m) for m in moments]
                   + [_breakdown(**persistent, grads=grads, transient__embedding_backward=C.embedding_backward_workspace(
                       model, train, prec))])
    backward = _largest((start, top, end))

    optimizer = _breakdown(**persistent, grads=grads, activations__input_leaf=leaf,
                           optimizer__transient=C.optimizer_transient(model, train, prec))
    return StepMemory(phases={"forward": forward, "backward": backward, "optimizer": optimizer},
                      paged_optimizer_bytes=C.optimizer_states_paged(model, train, prec))
