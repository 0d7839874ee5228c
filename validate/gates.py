"""CI regression gates on memory and accuracy (`validate --gates`).

- memory: the planner's peak allocated bytes against the committed traced baselines
  (data/baselines/traced.csv, the matrix, and random.csv, the random tier):
  median |planned/traced - 1| under 2% and the worst under 5%.
- regression: a fresh trace of the small fixed set (data/baselines/regression.csv) must
  equal its committed bytes exactly, phase by phase: a change in peft, transformers, torch or
  our step code that moves memory is caught, with the phase that moved and by how much.
- accuracy: every numerical invariant holds and every negative control is rejected.

Each gate takes the function it checks as an argument (the planner, the tracer, the
invariant runner), so its negative control can hand it a deliberately wrong one.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from planner.units import PHASES

from . import baselines as B

MEDIAN_BOUND = 0.02  # planner-accuracy issue: median |planned/traced - 1| < 2%
WORST_BOUND = 0.05  # ... and the worst case < 5%
GATES = ("memory", "regression", "accuracy")
PLAN_GPU = "h100-80gb"  # any bf16 GPU: peak allocated does not depend on the GPU once dtype is fixed


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    measured: str
    bound: str
    failures: tuple[str, ...] = ()
    details: dict = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "measured": self.measured, "bound": self.bound,
                "failures": list(self.failures)}


def planned_peak(cfg: B.Config) -> int:
    from planner import plan

    return plan(B.spec_for(cfg.model), PLAN_GPU, cfg.train).peak_allocated_bytes


def ratios(rows: list[dict], planned: Callable[[B.Config], int] = planned_peak) -> list[tuple[dict, float]]:
    """(row, planned / traced) for every baseline row."""
    return [(row, planned(B.config_of(row)) / row["peak_allocated_bytes"]) for row in rows]


def describe(row: dict) -> str:
    gc = " gc" if int(row["gradient_checkpointing"]) else ""
    adapter = f" r{row['rank']} {row['target_modules']}" if row["method"] != "full" else ""
    extra = "" if setting(row) == "defaults" else f" ({setting(row)})"
    return f"{row['model']} {row['method']} bs{row['batch_size']} seq{row['seq_len']}{adapter}{gc}{extra}"


def memory_gate(rows: list[dict], planned: Callable[[B.Config], int] = planned_peak) -> GateResult:
    """Planner vs traced peaks: median and worst |planned/traced - 1| within the bounds."""
    bound = f"median < {MEDIAN_BOUND:.0%}, worst < {WORST_BOUND:.0%}"
    if not rows:
        return GateResult("memory", False, "no baseline rows", bound, ("data/baselines/traced.csv is empty",))
    pairs = ratios(rows, planned)
    errors = [abs(r - 1) for _, r in pairs]
    median, worst = statistics.median(errors), max(errors)
    failures = tuple(f"{describe(row)}: planned/traced {r:.4f}"
                     for row, r in sorted(pairs, key=lambda p: -abs(p[1] - 1)) if abs(r - 1) >= WORST_BOUND)
    if median >= MEDIAN_BOUND:
        failures = (f"median |planned/traced - 1| is {median:.2%}",) + failures
    return GateResult("memory", median < MEDIAN_BOUND and worst < WORST_BOUND,
                      f"median {median:.3%}, worst {worst:.2%} over {len(pairs)} configurations", bound,
                      failures, {"pairs": pairs})


def traced_phases(cfg: B.Config) -> dict:
    from probes.fake import trace

    m = trace(B.spec_for(cfg.model), cfg.train)
    return {"peak_allocated_bytes": m.peak_allocated_bytes,
            **{f"{p}_bytes": m.phase_peaks.get(p) for p in PHASES}}


def regression_gate(rows: list[dict], traced: Callable[[B.Config], dict] = traced_phases,
                    progress: Callable[[str], None] = lambda _: None) -> GateResult:
    """A fresh trace of each committed regression configuration equals it to the byte."""
    bound = "bytes moved == 0 in every phase"
    if not rows:
        return GateResult("regression", False, "no baseline rows", bound, ("data/baselines/regression.csv is empty",))
    failures = []
    for row in rows:
        progress(f"re-tracing {describe(row)}")
        fresh = traced(B.config_of(row))
        for key in ("peak_allocated_bytes", *(f"{p}_bytes" for p in PHASES)):
            moved = fresh[key] - row[key]
            if moved:
                failures.append(f"{describe(row)}: {key.removesuffix('_bytes')} moved by {moved:+,} bytes "
                                f"({row[key]:,} -> {fresh[key]:,})")
    return GateResult("regression", not failures,
                      f"{len(failures)} figures moved over {len(rows)} configurations", bound, tuple(failures))


def accuracy_gate(run_invariants: Callable[[], list]) -> GateResult:
    """Every invariant holds and every negative control is rejected."""
    outcomes = run_invariants()
    bad = [o for o in outcomes if not o.ok]
    failures = tuple(f"{getattr(o, 'name', None) or o.result.name}: "
                     f"{getattr(o, 'error', None) or (o.result.detail if not o.result.passed else 'control not rejected')}"
                     for o in bad)
    return GateResult("accuracy", not bad, f"{len(outcomes) - len(bad)}/{len(outcomes)} invariants hold",
                      "all hold, all controls rejected", failures)


def ratio_table(pairs: list[tuple[dict, float]], group: Callable[[dict], str] = lambda row: row["method"]
                ) -> list[dict]:
    """Per group (method by default): configurations, median and worst |planned/traced - 1|,
    min and max ratio. The group's name is under "method"."""
    out = []
    for name in dict.fromkeys(group(row) for row, _ in pairs):
        rs = [r for row, r in pairs if group(row) == name]
        errs = [abs(r - 1) for r in rs]
        out.append({"method": name, "n": len(rs), "median_abs_error": statistics.median(errs),
                    "worst_abs_error": max(errs), "min_ratio": min(rs), "max_ratio": max(rs)})
    return out


REPORT_GROUPS = (
    ("table", lambda row: row.get("table", "traced.csv")),
    ("method", lambda row: row["method"]),
    ("precision", lambda row: f"{row['dtype']} {row['precision']}"),
    ("sharding", lambda row: "one GPU" if int(row["num_gpus"]) == 1 else f"{row['sharding']} on {row['num_gpus']} GPUs"),
    ("checkpointing", lambda row: "on" if int(row["gradient_checkpointing"]) else "off"),
    ("training setting", lambda row: setting(row)),
)


def setting(row: dict) -> str:
    """The training-script setting a row varies (tiers 6 and 7), or "defaults"."""
    if int(row["num_gpus"]) > 1:
        return f"{row['sharding']} on {row['num_gpus']} GPUs"
    if float(row["lora_dropout"]):
        return f"lora_dropout {float(row['lora_dropout']):g}"
    if row["attn_implementation"] != "auto":
        return f"attention {row['attn_implementation']}"
    if row["modules_to_save"]:
        return f"modules_to_save {row['modules_to_save']}"
    return "defaults"


def markdown_report(results: list[GateResult]) -> str:
    lines = ["# Gate report", "", "| gate | passed | measured | bound |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {'yes' if r.passed else 'NO'} | {r.measured} | {r.bound} |")
    for r in results:
        if r.failures:
            lines += ["", f"## {r.name}: what failed", ""] + [f"- {f}" for f in r.failures]
    memory = next((r for r in results if r.name == "memory" and "pairs" in r.details), None)
    if memory:
        for title, group in REPORT_GROUPS:
            lines += ["", f"## Planner / traced peak allocated, per {title}", "",
                      f"| {title} | configurations | median abs error | worst abs error | min ratio | max ratio |",
                      "|---|---|---|---|---|---|"]
            for t in ratio_table(memory.details["pairs"], group):
                lines.append(f"| {t['method']} | {t['n']} | {t['median_abs_error']:.3%} | "
                             f"{t['worst_abs_error']:.2%} | {t['min_ratio']:.4f} | {t['max_ratio']:.4f} |")
    return "\n".join(lines) + "\n"
