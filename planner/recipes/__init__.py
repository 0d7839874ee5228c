"""Training recipes as planner settings: ``plan --recipe FILE`` (and ``probe --recipe``).

    >>> from planner.recipes import load
    >>> recipe = load(["qlora.yml"])                      # doctest: +SKIP
    >>> recipe.model, recipe.settings["methods"], recipe.settings["rank"]

One module per framework, each naming its keys' sources: axolotl (a YAML with ``base_model``),
LLaMA-Factory (``model_name_or_path`` with its keys: ``finetuning_type``, ``cutoff_len``, ...),
TRL's SFT config (``model_name_or_path``), transformers' TrainingArguments JSON (with peft's
adapter_config.json beside it), and for the sharding an accelerate config
(``distributed_type``) or a DeepSpeed JSON (``zero_optimization``). yaml is imported only here.

Flags given beside ``--recipe`` override the file (:func:`apply`). Every failure is a
:class:`RecipeError`, one line naming the file and the key.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import axolotl, hf_trainer, llamafactory, sharding, trl
from .keys import RecipeError
from .recipe import PEFT_DEFAULT, Recipe, as_flags

__all__ = ["PEFT_DEFAULT", "Recipe", "RecipeError", "apply", "as_flags", "load", "read"]

# in the order they are tried: LLaMA-Factory before TRL (both have model_name_or_path)
TRAINING = (axolotl, llamafactory, trl, hf_trainer)


def _parse(path: Path) -> dict:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.__class__.__name__}: {exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path.name}: not JSON ({exc.msg}, line {exc.lineno})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)  # safe: plain data only, no Python objects
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise RecipeError(f"{path.name}: not YAML ({getattr(exc, 'problem', None) or exc.__class__.__name__}"
                              f"{where})") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path.name}: a recipe must be a YAML or JSON mapping of keys, got "
                          f"{type(data).__name__}")
    return data


def read(path: str | Path) -> Recipe:
    """One recipe file, its framework told by its keys."""
    path = Path(path)
    data = _parse(path)
    if sharding.is_deepspeed(data):
        return sharding.read_deepspeed(data, path)
    if sharding.is_accelerate(data):
        return sharding.read_accelerate(data, path)
    for framework in TRAINING:
        if framework.detect(data):
            return framework.read(data, path)
    raise RecipeError(f"{path.name}: not a recipe ftmem reads: expected axolotl (base_model), LLaMA-Factory or TRL "
                      "(model_name_or_path), TrainingArguments JSON (per_device_train_batch_size), an accelerate "
                      "config (distributed_type) or a DeepSpeed JSON (zero_optimization)")


def load(paths) -> Recipe:
    """Several files as one recipe: at most one training recipe, then sharding configs
    (accelerate, DeepSpeed) whose settings replace its sharding ones."""
    recipes = [read(p) for p in paths]
    training = [r for r in recipes if r.framework not in ("accelerate", "DeepSpeed")]
    if len(training) > 1:
        raise RecipeError(f"one training recipe at a time: {', '.join(r.source for r in training)}")
    ordered = training + [r for r in recipes if r not in training]
    settings: dict = {}
    for r in ordered:
        settings.update(r.settings)
    first = ordered[0]
    return Recipe(source=", ".join(r.source for r in ordered), framework=" + ".join(r.framework for r in ordered),
                  model=first.model, revision=first.revision, settings=settings,
                  notes=tuple(n for r in ordered for n in r.notes))


def apply(ctx, params: dict, recipe: Recipe) -> tuple[dict, tuple[str, ...]]:
    """``params`` (a click command's) with the recipe's settings where the command line left
    the default: flags override the file. Returns the new params and notes on what changed
    (a sharding without --num-gpus)."""
    from click.core import ParameterSource

    def from_flags(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)

    out = dict(params)
    notes: tuple[str, ...] = ()
    for name, value in recipe.settings.items():
        if name in out and not from_flags(name):
            out[name] = value if not isinstance(out[name], str) or isinstance(value, str) else str(value)
    if recipe.model and not from_flags("models"):
        out["models"] = (recipe.model,)
        if recipe.revision and "revision" in out and not from_flags("revision"):
            out["revision"] = recipe.revision
    if out.get("num_gpus", 1) == 1 and out.get("sharding", "none") != "none" and not from_flags("sharding"):
        notes += (f"the recipe shards with {out['sharding']} over the GPUs it is launched on: planned on one GPU; "
                  "add --num-gpus N to plan one rank of N",)
        out["sharding"], out["offload"] = "none", "none"
    if out.get("num_gpus", 1) > 1 and out.get("sharding", "none") == "none" and not from_flags("sharding"):
        out["sharding"] = "ddp"
        notes += ("--num-gpus without a sharding in the recipe: planned as DDP",)
    return out, notes
