"""Every model x GPU x method of one ``plan`` call: the reports, the methods left out and why,
and one recommendation and table per model x GPU. The ``plan`` command prints it; the web
page shows it. Pure: no click, no printing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from planner.cli.render import Report, table, to_json
from planner.fit import max_batch_size, max_seq_len, recommend
from planner.model.specs import GpuSpec, ModelSpec, TrainSpec
from planner.model.targets import UnsupportedMethod
from planner.plan import plan
from planner.time import roofline
from planner.time.data import Data, data_step


@dataclass(frozen=True)
class Group:
    """The plans of one model x GPU, and the recommendation ``plan`` prints under its table."""

    model: ModelSpec
    gpu: GpuSpec
    reports: tuple[Report, ...]
    recommendation: object  # planner.fit.Recommendation
    table: str  # the table ``plan`` prints for this model and GPU


@dataclass(frozen=True)
class Outcome:
    groups: tuple[Group, ...]
    skipped: tuple[str, ...]  # why each method left out of "all" was refused (the libraries refuse it)

    @property
    def reports(self) -> list[Report]:
        return [r for g in self.groups for r in g.reports]

    @property
    def plans(self) -> list:
        return [r.plan for r in self.reports]

    def json(self) -> str:
        """What ``plan --json`` prints for these settings (without click.echo's newline)."""
        return to_json(self.reports)


def check_data_options(dataset_tokens: int | None, epochs: int, mean_len: int | None, seq_len: int) -> None:
    """Raise ValueError, with ``plan``'s message, on a data setting out of range."""
    if dataset_tokens is not None and dataset_tokens < 1:
        raise ValueError(f"--dataset-tokens must be at least 1, got {dataset_tokens}")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    if mean_len is not None and not 1 <= mean_len <= seq_len:
        raise ValueError(f"--mean-len must be between 1 and --seq-len ({seq_len}), got {mean_len}")


def sweep(models: list[ModelSpec], gpus: list[GpuSpec], methods: tuple[str, ...], base: TrainSpec, *,
          named: bool, search_batch: bool = False, search_seq: bool = False, dataset_tokens: int | None = None,
          epochs: int = 1, calibrated: bool = True, mean_len: int | None = None, packing: bool = False,
          host: str = roofline.DEFAULT_HOST, notes: tuple[str, ...] = ()) -> Outcome:
    """Plan ``models`` x ``gpus`` x ``methods`` (``base`` with each method).

    ``named``: the methods were asked for by name, so a method the libraries refuse raises
    UnsupportedMethod; otherwise (``all``) it is left out, with why in ``Outcome.skipped``, and a
    model x GPU whose every method is refused has no group. ``notes`` go first in every plan's
    notes (a recipe's). ``calibrated`` False plans without the committed CUDA rows' calibrations.
    """
    cals = None if calibrated else {}
    data = Data(mean_len, packing)
    shown = mean_len is not None or packing
    groups, skipped = [], {}
    for model in models:
        for gpu in gpus:
            group = []
            for method in methods:
                train = base.with_(method=method)
                try:
                    planned = plan(model, gpu, train, cals, cals, host)
                except UnsupportedMethod as exc:
                    if named:
                        raise
                    skipped.setdefault(str(exc), None)
                    continue
                if notes:
                    planned = replace(planned, notes=notes + planned.notes)
                real = data_step(*planned.timing_inputs, data) if planned.timing_inputs else None
                group.append(Report(
                    planned,
                    max_batch_size(model, gpu, train, calibrations=cals) if search_batch else None,
                    max_seq_len(model, gpu, train, calibrations=cals) if search_seq else None,
                    real.hours(dataset_tokens, epochs) if dataset_tokens and real else None,
                    (dataset_tokens, epochs) if dataset_tokens else None,
                    real if shown else None,
                ))
            if not group:  # every method refused for this model: nothing to advise on
                continue
            advice = recommend(model, gpu, base, [r.plan for r in group])
            groups.append(Group(model, gpu, tuple(group), advice, table(model, gpu, base, group, advice)))
    return Outcome(tuple(groups), tuple(skipped))
