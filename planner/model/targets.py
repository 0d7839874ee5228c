"""What a training spec adapts: the decoder Linears and fused parameters its adapter targets,
the rank it may take, and whether the embedding and lm_head are trained.

peft's rules (0.21): ``all-linear`` is every Linear of the decoder layers, never lm_head;
module names match exactly; ``target_parameters`` reach the fused 3-D expert weights of a
mixture of experts, which ``all-linear`` itself rewrites to for the families whose checkpoint
conversion peft knows.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

from planner.model.architectures import INDEXER_ROLES, MLP_INPUT_ROLES, SHARED_ROLES, Linear
from planner.model.specs import ALL_LINEAR, ModelSpec, TrainSpec


@lru_cache(maxsize=256)
def targeted_linears(model: ModelSpec, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The decoder Linear modules an adapter targets.

    ``all-linear`` is every Linear of the decoder layers; like peft, it excludes the output
    layer (lm_head). Names are matched exactly against the layer's module names.
    """
    if ALL_LINEAR in targets:
        if model.traits.peft_moe_conversion:
            return _unconverted(model, model.linears)
        moe = model.layer.moe
        if moe is not None and moe.peft_converts and moe.shared_intermediate:
            # peft's rewrite of all-linear for a converted family names gate_proj / up_proj /
            # down_proj as the fused experts, so the shared expert's Linears of those names are
            # left out; its sigmoid gate stays (tracer, tiny Qwen3-Next: LoRA on in_proj_qkvz,
            # in_proj_ba, out_proj, q/k/v/o, the router, the experts and shared_expert_gate only)
            return tuple(lin for lin in model.linears if lin.role not in ("shared_gate", "shared_up", "shared_down"))
        return model.linears
    known = model.all_linear_names + tuple(lin.name for lin in targeted_root_linears(model, (ALL_LINEAR,)))
    unknown = [t for t in targets if not any(_matches(name, t) for name in known)]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{model.name} has no module {', '.join(hints)}; "
                         f"its Linear modules are {', '.join(known)} (or use {ALL_LINEAR})")
    return _unconverted(model, tuple(lin for lin in model.linears if any(_matches(lin.name, t) for t in targets)))


def _unconverted(model: ModelSpec, linears: tuple[Linear, ...]) -> tuple[Linear, ...]:
    """The Linears that keep their adapter once peft has converted the targets for the model
    type's checkpoint conversion (Traits.peft_moe_conversion): peft's
    ``_convert_peft_config_moe`` maps the MLP names (gate_proj, up_proj, down_proj) to the fused
    experts' target_parameters and removes them from target_modules, so the MLP Linears of every
    layer (a dense layer's, a shared expert's) keep none (tracer, tiny GLM-4.5 and DeepSeek-V3,
    all-linear: no LoRA on mlp.gate_proj of the dense layer nor on mlp.shared_experts.*)."""
    if not model.traits.peft_moe_conversion:
        return linears
    return tuple(lin for lin in linears if lin.role not in MLP_ROLES)


# the Linear roles of an MLP (a dense one's, a shared expert's)
MLP_ROLES = MLP_INPUT_ROLES | SHARED_ROLES | {"down"}


@lru_cache(maxsize=256)
def targeted_root_linears(model: ModelSpec, targets: tuple[str, ...]) -> tuple[Linear, ...]:
    """The Linear modules outside the decoder layers an adapter targets (planner.model.inventory.root_linears:
    Gemma 4's per_layer_model_projection): all of them under ``all-linear``, else by name."""
    from planner.model.inventory import root_linears

    return tuple(lin for lin in root_linears(model)
                 if ALL_LINEAR in targets or any(_matches(lin.name, t) for t in targets))


def _matches(name: str, target: str) -> bool:
    """peft's match of a target_modules entry: the module's name, or its dotted suffix
    ("gate_proj" reaches a shared expert's "shared_expert.gate_proj")."""
    return name == target or name.endswith("." + target)


@lru_cache(maxsize=256)
def targeted_names(model: ModelSpec, train: TrainSpec) -> frozenset[str]:
    """The names of the Linear modules ``train``'s adapter targets; none for full fine-tuning."""
    if not train.is_adapter:
        return frozenset()
    return frozenset(lin.name for lin in targeted_linears(model, train.target_modules))


@dataclass(frozen=True)
class ParamTarget:
    """A parameter LoRA adapts directly (peft's target_parameters): a fused expert weight, as
    ``experts`` stacked (in x out) matrices, or the router's (E x h) weight (experts = 1)."""

    name: str  # "experts.gate_up_proj", "experts.down_proj", "<router>.weight"
    part: str  # "gate_up", "down", "router"
    rank: int
    experts: int
    in_features: int
    out_features: int

    @property
    def params(self) -> int:
        """peft's ParamWrapper: lora_A (r*E x in) and lora_B (out x r*E): E*r*(in + out)."""
        return self.experts * self.rank * (self.in_features + self.out_features)

    @property
    def weight(self) -> int:
        """Elements of the adapted weight (E*in*out): what the merged W + s*B@A materializes."""
        return self.experts * self.in_features * self.out_features


EXPERT_PARAMETERS = ("experts.gate_up_proj", "experts.down_proj")


class UnsupportedMethod(ValueError):
    """A method the libraries refuse for this model and these targets (not a bad number)."""


@lru_cache(maxsize=256)
def targeted_parameters(model: ModelSpec, train: TrainSpec) -> tuple[ParamTarget, ...]:
    """The fused parameters an adapter targets.

    Explicit ``target_parameters`` (peft matches them as suffixes: "experts.gate_up_proj" or
    "mlp.experts.gate_up_proj") get the rank as given. ``all-linear``, and the MLP's module
    names, on a family whose checkpoint conversion peft knows (Mixtral, Qwen3-MoE, GLM-4.5,
    DeepSeek-V3) are rewritten by peft (``convert_peft_config_for_transformers``) to the router
    at rank r, gate_up at 2r (alpha doubled: its rank_pattern) and down at r (:func:`_converted`);
    for gpt-oss all-linear stays on the attention.
    """
    moe = model.moe
    if not train.is_adapter:
        return ()
    if moe is None:
        if train.target_parameters and not model.traits.peft_moe_conversion:  # (a dense kind of an MoE model: none)
            raise ValueError(f"{model.name} has no fused expert parameters to target "
                             f"({', '.join(train.target_parameters)}); use --target-modules")
        return ()
    e, h, i, r = moe.experts, model.hidden_size, moe.intermediate, train.rank
    wanted = _converted(model, train) if moe.peft_converts else {}
    for name in train.target_parameters:
        part = next((p for p in ("gate_up", "down") if name.endswith(f"experts.{p}_proj")), None)
        if part is None:
            raise ValueError(f"unknown target parameter {name!r} for {model.name} "
                             f"(its fused experts are {', '.join(EXPERT_PARAMETERS)})")
        wanted.setdefault(part, r)  # (peft's rank_pattern for a converted gate_up still gives it 2r)
    shapes = {"router": (1, h, e, f"{moe.router}.weight"), "gate_up": (e, h, 2 * i, EXPERT_PARAMETERS[0]),
              "down": (e, i, h, EXPERT_PARAMETERS[1])}
    out = []
    for part in ("router", "gate_up", "down"):
        if part in wanted:
            n, fan_in, fan_out, name = shapes[part]
            out.append(ParamTarget(name, part, wanted[part], n, fan_in, fan_out))
    if out and train.is_dora:
        raise UnsupportedMethod(f"peft refuses DoRA on fused expert parameters ({model.name}: "
                         f"{', '.join(t.name for t in out)}); adapt the attention only, e.g. "
                         f"--target-modules {','.join(model.linear_names)}")
    if out and train.lora_dropout > 0:
        # peft 0.21 lora.ParamWrapper.__init__: "lora.ParamWrapper does not work with lora_dropout != 0"
        raise UnsupportedMethod(f"peft refuses LoRA dropout on fused expert parameters ({model.name}: "
                                f"{', '.join(t.name for t in out)}): use --lora-dropout 0, or adapt the attention "
                                f"only, e.g. --target-modules {','.join(model.linear_names)}")
    return tuple(out)


def _converted(model: ModelSpec, train: TrainSpec) -> dict[str, int]:
    """The fused parameters peft's conversion makes of target module names (peft 0.21
    ``_convert_peft_config_moe``): all-linear names every MLP name; the router's name gives the
    router at rank r, the gate and up names together gate_up at 2r (alpha doubled: its
    rank_pattern and alpha_pattern; one without the other is refused), the down name down at r.
    Names match as peft matches them, the name or a dotted suffix (tracer: GLM-4.5-Air with
    target_modules gate_proj, up_proj, down_proj: gate_up at 2r, no dense-layer or shared-expert LoRA)."""
    moe, r = model.moe, train.rank
    router, gate, up, down = moe.peft_names
    if ALL_LINEAR in train.target_modules:
        names = {router, gate, up, down}
    else:
        names = {name for t in train.target_modules for name in (router, gate, up, down)
                 if t == name or t.endswith("." + name)}
    if (gate in names) != (up in names):
        raise UnsupportedMethod(f"peft cannot convert {gate if gate in names else up} without "
                                f"{up if gate in names else gate} on {model.name}: they are fused into "
                                f"{EXPERT_PARAMETERS[0]}")
    parts = (("router", router, r), ("gate_up", gate, 2 * r), ("down", down, r))
    return {part: rank for part, name, rank in parts if name in names}


def trains_embedding(train: TrainSpec) -> bool:
    """Whether the input embedding gets a gradient: full fine-tuning, or embed_tokens in modules_to_save."""
    return train.method == "full" or "embed_tokens" in train.modules_to_save


def trains_lm_head(train: TrainSpec) -> bool:
    """Whether the output projection gets a gradient: full fine-tuning, or lm_head in modules_to_save."""
    return train.method == "full" or "lm_head" in train.modules_to_save


# peft 0.21 refuses LoRA on these modules of these model types (tuners_utils.
# _check_lora_target_modules_mamba): the fused Mamba kernel uses out_proj's weight itself
# (mamba_split_conv1d_scan_combined), past any adapter, and conv1d is no Linear
PEFT_MAMBA_TYPES = frozenset({"falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h"})
PEFT_MAMBA_REFUSED = frozenset({"out_proj", "conv1d"})


def check_peft_refusals(model: ModelSpec, train: TrainSpec) -> None:
    """Refuse (:class:`UnsupportedMethod`) what peft refuses: LoRA on a Mamba mixer's out_proj for
    the model types peft lists, which all-linear reaches (Nemotron-H)."""
    if not train.is_adapter or model.model_type not in PEFT_MAMBA_TYPES:
        return
    names = {lin.name for view in model.by_kind() for lin in targeted_linears(view, train.target_modules)}
    refused = sorted(n for n in names if n.rsplit(".", 1)[-1] in PEFT_MAMBA_REFUSED)
    if refused:
        keep = ",".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in model.all_linear_names
                                      if n.rsplit(".", 1)[-1] not in PEFT_MAMBA_REFUSED))
        raise UnsupportedMethod(f"peft refuses LoRA on {', '.join(refused)} of {model.model_type} models (the fused "
                                f"Mamba kernel uses out_proj's weight itself): name the targets, e.g. "
                                f"--target-modules {keep}")


def check_gradient_reached(model: ModelSpec, train: TrainSpec) -> None:
    """Refuse (:class:`UnsupportedMethod`) adapters that no gradient reaches: targets inside
    DeepSeek-V3.2's indexer only (it runs under torch.no_grad), no fused parameter, nothing in
    modules_to_save. The loss then has no grad_fn and backward fails (tracer, a real CPU step of a
    tiny DeepSeek-V3.2 with LoRA on indexer.wk alone: "element 0 of tensors does not require grad")."""
    if not train.is_adapter or train.modules_to_save:
        return
    views = model.by_kind()
    adapted = [lin for view in views for lin in targeted_linears(view, train.target_modules)]
    if not adapted or any(lin.role not in INDEXER_ROLES for lin in adapted):
        return
    if any(targeted_parameters(view, train) for view in views) or targeted_root_linears(model, train.target_modules):
        return
    raise UnsupportedMethod(f"no gradient reaches the adapters on {', '.join(dict.fromkeys(l.name for l in adapted))}: "
                            "DeepSeek-V3.2's indexer runs under torch.no_grad; target the attention or the experts too")


def check_rank(model: ModelSpec, train: TrainSpec) -> None:
    """A LoRA rank above min(in, out) of a targeted layer cannot add expressiveness: refuse it;
    and what peft refuses (:func:`check_peft_refusals`), and adapters no gradient reaches
    (:func:`check_gradient_reached`)."""
    if not train.is_adapter:
        return
    check_peft_refusals(model, train)
    check_gradient_reached(model, train)
    for view in model.by_kind():
        _check_rank(view, train)


# Linears narrower than any usual rank that all-linear reaches and peft adapts anyway (lora_B (out, r)):
# Qwen2-MoE's shared-expert gate (one output), a Gated DeltaNet's beta / decay projections (one
# output per value head: 32 in Qwen3.5-35B-A3B, below a rank of 64)
# DeepSeek-V3.2's indexer key and head weights (128 and 64 wide: h -> index_head_dim, index_n_heads)
NARROW_ROLES = frozenset({"shared_scale", "delta_b", "delta_a", "delta_ba", "index_k", "index_w"})


def _check_rank(model: ModelSpec, train: TrainSpec) -> None:
    for lin in targeted_linears(model, train.target_modules):
        if lin.role == "shared_scale" or (lin.role in NARROW_ROLES and ALL_LINEAR in train.target_modules):
            continue
        if train.rank > min(lin.in_features, lin.out_features):
            raise ValueError(f"rank {train.rank} is larger than {lin.name} "
                             f"({lin.in_features} -> {lin.out_features}) of {model.name}")
