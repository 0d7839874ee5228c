"""``--recipe FILE`` for `plan` and `probe`: the option, and the glue that turns a recipe into
the command's settings (flags given beside it win). planner.recipes (and yaml) are imported
only when a recipe is given, so that a plain `plan` starts as fast as before."""
from __future__ import annotations


import click

from planner.cli.exits import fail


def recipe_option(f):
    """--recipe FILE (repeatable: a training recipe, then an accelerate or DeepSpeed config)."""
    return click.option(
        "--recipe", "recipe_paths", multiple=True, type=click.Path(dir_okay=False),
        help="A training recipe to plan: axolotl or LLaMA-Factory YAML, TRL SFT config (YAML/JSON), "
             "TrainingArguments JSON (with adapter_config.json beside it); repeat it for an accelerate "
             "config or a DeepSpeed JSON (the sharding). Flags given beside it override the file.")(f)


def with_recipe(ctx: click.Context, paths, prog: str) -> tuple[dict, tuple[str, ...]]:
    """The command's parameters with the recipes' settings applied, and the notes every plan
    carries: what the recipe mapped, its defaults, the keys not modelled or ignored, and the
    flags that reproduce it. One line and exit 2 on a bad recipe."""
    from planner import recipes

    try:
        recipe = recipes.load(paths)
        params, notes = recipes.apply(ctx, dict(ctx.params), recipe)
    except (recipes.RecipeError, ValueError) as exc:
        fail(str(exc), prog=prog)
    shown = {k: params[k] for k in recipe.settings if k in params and k != "methods"}
    if shown.get("target_modules") == recipes.PEFT_DEFAULT:
        shown.pop("target_modules")
    flags = recipes.as_flags(params["models"][0] if len(params["models"]) == 1 else None, params.get("revision"),
                             params["methods"], shown)
    return params, recipe.notes + notes + (f"recipe {recipe.source} as flags: {prog} {flags}",)


# The command parameters a recipe can set, in the order :func:`recipe_settings` returns them.
RECIPE_PARAMS = ("models", "revision", "methods", "rank", "alpha", "target_modules", "target_parameters", "lora_dropout",
                 "modules_to_save", "batch_size", "seq_len", "gradient_checkpointing", "dtype", "precision", "optim",
                 "quant_type", "double_quant", "attn_implementation", "num_gpus", "sharding", "offload")


def recipe_settings(params: dict) -> tuple:
    """The command parameters of :func:`with_recipe`'s result, in :data:`RECIPE_PARAMS` order."""
    return tuple(params[name] for name in RECIPE_PARAMS)


def resolve_targets(target_modules: str, models, paths) -> str:
    """peft's default target modules where a recipe leaves them to peft (TRL, a LoraConfig
    without target_modules), for the model's type."""
    from planner.recipes.recipe import PEFT_DEFAULT

    if target_modules != PEFT_DEFAULT:
        return target_modules
    from planner.recipes.hf_trainer import peft_targets

    from pathlib import Path

    found = {peft_targets(m.model_type, ", ".join(Path(p).name for p in paths), "lora_target_modules")
             for m in models}
    if len(found) > 1:
        raise ValueError("the recipe leaves target modules to peft, whose defaults differ between these models: "
                         "pass --target-modules")
    return found.pop()
