"""The web page's one door into the planner: every planner name the page uses is imported here.

The rest of ``planner.web`` imports this module only, so that a change to where the planner
keeps a function is one edit here. What the page imports are the planner's public entry
points: the ``plan`` command itself (its options give the page its setting names, defaults
and choices), the package's API (``plan``, ``TrainSpec``, the catalog), the searches and the
advice of ``fit``, and ``render``'s JSON, so that the page's JSON is what ``plan --json``
prints, byte for byte (a test runs both).

``run`` is the ``plan`` command's own sweep (planner.cli.sweep: one report per model x GPU x
method, the methods of "all" the libraries refuse left out with why, one recommendation and
table per model x GPU), from the page's settings. Pure Python: no gradio, no I/O beyond the
planner's own catalog.
"""
from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache

import data
from planner import CatalogError, METHODS, TrainSpec, get_gpus, get_model, model_names
from planner.model.catalog import model_from_config
from planner.cli.command import main as plan_command
from planner.cli.options import parse_names, parse_targets
from planner.cli.sweep import Outcome, check_data_options, sweep
from planner.time import roofline

__all__ = ["CatalogError", "METHODS", "Outcome", "catalog_model_keys", "check_range", "command_defaults",
           "command_options", "figure", "gpu_choices", "model_choices", "model_from_paste", "resolve_model", "run"]


def command_options() -> dict:
    """The ``plan`` command's click options by parameter name (``batch_size`` -> its Option)."""
    return {p.name: p for p in plan_command.params}


def command_defaults() -> dict:
    """The value of each ``plan`` option when it is not given (a flag's False, a repeatable
    option's ``()``), by parameter name."""
    import click

    ctx = click.Context(plan_command)
    out = {}
    for p in plan_command.params:
        value = p.get_default(ctx)
        if p.multiple and not isinstance(value, (tuple, list)):  # none given (click's unset marker)
            value = ()
        out.setdefault(p.name, value)  # --table/--json/--csv share one name: the first is the default
    return out


def check_range(name: str, value):
    """``value`` through the ``plan`` option's own range check, where it has one
    (``--lora-dropout`` takes [0, 1)): ValueError with click's words otherwise."""
    import click

    option = command_options()[name]
    if value is None or not hasattr(option.type, "clamp"):  # click's IntRange / FloatRange
        return value
    try:
        return option.type.convert(value, option, None)
    except click.BadParameter as exc:
        raise ValueError(f"Invalid value for '{max(option.opts, key=len)}': {exc.message}") from None


def model_choices() -> list[str]:
    """The catalog's canonical model names, in catalog order (``plan --list-models``)."""
    return model_names()


def gpu_choices() -> list[str]:
    """The catalog's GPU names, in catalog order (``plan --list-gpus``)."""
    from planner import gpu_names

    return gpu_names()


@lru_cache(maxsize=1)
def catalog_model_keys() -> dict[str, str]:
    """Every name the model catalog answers to (name, HF id, aliases), lower-cased, mapped to
    the canonical name: read from data/models.json, whose fields README documents. The page
    resolves only these, so that no name typed in the page reaches the file system (``plan
    --model`` also reads a local config.json path)."""
    entries = json.loads(data.path("models.json").read_text())["models"]
    return {key.lower(): e["name"] for e in entries for key in (e["name"], e["hf_id"], *e["aliases"])}


def resolve_model(canonical: str):
    """The catalog ModelSpec of a canonical catalog name."""
    return get_model(canonical)


def model_from_paste(config: dict, name: str):
    """The ModelSpec of pasted config.json fields, as ``plan --model NAME.json`` builds it."""
    return model_from_config(config, name)


def run(models: list, gpus: list[str], methods: tuple[str, ...], train: dict, *, search_batch: bool,
        search_seq: bool, dataset_tokens: int | None, epochs: int, calibrated: bool, mean_len: int | None = None,
        packing: bool = False, host: str = roofline.DEFAULT_HOST) -> Outcome:
    """Plan ``models`` x ``gpus`` (names) x ``methods`` as ``plan`` does (planner.cli.sweep).

    ``models`` are zero-argument callables that return a ModelSpec (or raise CatalogError),
    called after the settings are checked, in ``plan``'s order, so that the first bad input
    reported is the one ``plan`` reports.

    ``methods`` empty means every method, where a method the libraries refuse for the model is
    skipped with why (as ``plan`` without --method, its "plan: skipped: ..." line); named methods
    raise instead. ``train`` holds TrainSpec's fields as the command parses them (target_modules
    etc. still comma strings). Raises CatalogError or ValueError with ``plan``'s message.
    """
    chosen = METHODS if not methods else tuple(dict.fromkeys(methods))
    check_data_options(dataset_tokens, epochs, mean_len, train["seq_len"])
    fields = dict(train)
    fields["target_modules"] = parse_targets(fields["target_modules"])
    fields["target_parameters"] = parse_names(fields["target_parameters"])
    fields["modules_to_save"] = parse_names(fields["modules_to_save"])
    base = TrainSpec(method=chosen[0], **fields)
    model_specs = [resolve() for resolve in models]
    outcome = sweep(model_specs, get_gpus(gpus), chosen, base, named=bool(methods), search_batch=search_batch,
                    search_seq=search_seq, dataset_tokens=dataset_tokens, epochs=epochs, calibrated=calibrated,
                    mean_len=mean_len, packing=packing, host=host)
    return replace(outcome, skipped=tuple(f"plan: skipped: {why}" for why in outcome.skipped))


def figure(plans: list):
    """``plan --plot``'s figure of these plans (a matplotlib Figure): a stacked bar per method
    whose segments are the breakdown rows and whose top is device used, the GPU's memory as a
    dashed line. Raises planner.cli.plot.PlotError without matplotlib."""
    from planner.cli import plot

    return plot.figure(plans)
