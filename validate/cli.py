"""The `validate` command: run the numerical invariants and report them.

    validate                      # every invariant, a table
    validate --only dora --json   # one group, machine-readable

Exit status: 0 every invariant holds (and every negative control is rejected), 3 an
invariant fails or a control is not rejected, 2 bad usage, 1 an unexpected error.
JSON on stdout is ``{"results": [...], "passed": bool}``; each result has name, group,
measured, bound, passed, detail and control {broken, measured, rejected, detail}.
Progress goes to stderr.
"""
from __future__ import annotations

import json
import sys
import time

import click

from planner.cli.exits import ERROR, GATE_FAILED, OK, USAGE, fail

from .invariants import GROUPS


def _fmt(value) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_table(outcomes) -> str:
    from .invariants import Errored

    rows = [("invariant", "measured", "bound", "pass", "control")]
    for o in outcomes:
        if isinstance(o, Errored):
            rows.append((o.name, "-", "-", "ERROR", o.error))
            continue
        control = f"rejected ({o.broken})" if o.control_rejected else f"NOT REJECTED ({o.broken})"
        rows.append((o.result.name, _fmt(o.result.measured), o.result.bound,
                     "yes" if o.result.passed else "NO", control))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    failed = [o for o in outcomes if not isinstance(o, Errored) and not o.result.passed]
    for o in failed:
        lines.append(f"FAILED {o.result.name}: {o.result.detail}")
    return "\n".join(lines)


def render_json(outcomes) -> str:
    from .invariants import Errored

    results = []
    for o in outcomes:
        if isinstance(o, Errored):
            results.append({"name": o.name, "group": o.group, "measured": None, "bound": None, "passed": False,
                            "detail": f"error: {o.error}", "control": None})
        else:
            results.append(o.to_dict())
    return json.dumps({"results": results, "passed": all(o.ok for o in outcomes)}, indent=2)


def run(groups: tuple[str, ...], progress) -> list:
    from . import models
    from .invariants import run as run_invariants
    from .invariants import select

    invariants = select(groups)  # raises UnknownGroup before anything slow happens
    models.quiet()
    return run_invariants(invariants, progress)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--only", "groups", multiple=True, metavar="GROUP",
              help=f"Run only this group (repeatable): {', '.join(GROUPS)}.")
@click.option("--json", "fmt", flag_value="json", help='Print {"results": [...], "passed": bool} only.')
@click.option("--table", "fmt", flag_value="table", default=True, help="Print a table (the default).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--gates", "run_gates", is_flag=True,
              help="Run the CI regression gates (memory: planner vs traced baselines; regression: a fresh "
                   "trace of the fixed set equals its baseline; accuracy: every invariant) instead.")
@click.option("--gate", "gate_names", multiple=True, metavar="GATE",
              help="With --gates: run only this gate (repeatable): memory, regression, accuracy.")
@click.option("--report", type=click.Path(dir_okay=False, writable=True), default=None,
              help="With --gates: also write a markdown report (ratio tables per method, and planned against "
                   "published tokens per second) to this file.")
def validate(groups: tuple[str, ...], fmt: str, quiet: bool, run_gates: bool, gate_names: tuple[str, ...],
             report: str | None) -> None:
    """Check the maths: LoRA, DoRA and NF4/FP4 invariants and planner parameter counts.

    With --gates: the CI regression gates on memory and accuracy.
    """
    from .invariants import Errored, UnknownGroup

    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        fail(f"validate: unknown group {', '.join(map(repr, unknown))}; valid groups: {', '.join(GROUPS)}", USAGE)
    start = time.perf_counter()

    def progress(line: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - start:5.1f} s] {line}", err=True)

    if run_gates or gate_names or report:
        sys.exit(_run_gates(gate_names, groups, fmt, report, progress))

    progress(f"importing torch, transformers, peft, bitsandbytes; groups: {', '.join(groups or GROUPS)}")
    try:
        outcomes = run(groups, progress)
    except UnknownGroup as exc:  # pragma: no cover - caught above
        fail(f"validate: {exc}", USAGE)
    click.echo(render_json(outcomes) if fmt == "json" else render_table(outcomes))
    errors = [o for o in outcomes if isinstance(o, Errored)]
    for o in errors:
        click.echo(f"validate: {o.name} raised {o.error}", err=True)
    n_ok = sum(o.ok for o in outcomes)
    progress(f"{n_ok}/{len(outcomes)} invariants hold with their controls rejected, "
             f"{time.perf_counter() - start:.1f} s")
    if errors:
        sys.exit(ERROR)
    sys.exit(OK if n_ok == len(outcomes) else GATE_FAILED)


def _run_gates(names: tuple[str, ...], groups: tuple[str, ...], fmt: str, report: str | None, progress) -> int:
    from . import baselines
    from . import gates as G

    unknown = [n for n in names if n not in G.GATES]
    if unknown:
        fail(f"validate: unknown gate {', '.join(map(repr, unknown))}; valid gates: {', '.join(G.GATES)}", USAGE)
    try:
        traced = baselines.memory_rows() if not names or "memory" in names else []
        regression = baselines.load("regression.csv") if not names or "regression" in names else []
    except baselines.BaselineError as exc:
        fail(f"validate: {exc}", ERROR)
    results = []
    for name in names or G.GATES:
        progress(f"gate {name}")
        if name == "memory":
            results.append(G.memory_gate(traced))
        elif name == "regression":
            from . import models

            models.quiet()
            results.append(G.regression_gate(regression, progress=progress))
        else:
            results.append(G.accuracy_gate(lambda: run(groups, progress)))
    if fmt == "json":
        click.echo(json.dumps({"gates": [r.to_dict() for r in results], "passed": all(r.passed for r in results)},
                              indent=2))
    else:
        rows = [("gate", "passed", "measured", "bound")] + [
            (r.name, "yes" if r.passed else "NO", r.measured, r.bound) for r in results]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines += [f"FAILED {r.name}: {f}" for r in results for f in r.failures]
        click.echo("\n".join(lines))
    if report:
        from . import throughput

        with open(report, "w") as f:
            f.write(G.markdown_report(results) + throughput.markdown())
        progress(f"report written to {report}")
    return OK if all(r.passed for r in results) else GATE_FAILED


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors exit 2 (click), unexpected errors exit 1 with one line."""
    try:
        validate.main(args=argv, prog_name="validate", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as exc:  # one line, no traceback
        fail(f"{type(exc).__name__}: {exc}", ERROR, prog="validate")


if __name__ == "__main__":
    main()
