"""Planned against published tokens per second: a report section, not a gate.

data/throughput.json holds published single-GPU measurements whose settings the source
states (each row with its source; what a source leaves unstated is recorded with it). Each
row is planned with the default efficiency factors (planner.time.roofline) on the catalog GPU
the source names, with its gradient accumulation (planner.time.timing.iteration_seconds), and
compared with the published figure. Summaries: the median and worst |planned / published - 1|
over all rows, by GPU and by method (targets: median under 10%, worst under 25%), and the
speed ratios of two methods (or checkpointing on / off) under otherwise equal settings of one
source, planned against published (target: within 5%).
Pure Python: no torch.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import lru_cache

import data
from planner.model.catalog import get_gpu, get_model, model_from_config
from planner.model.precision import resolve_dtype
from planner.model.specs import TrainSpec
from planner.time.timing import iteration_seconds, step_time

ERROR_TARGET = 0.10
WORST_TARGET = 0.25
RATIO_TARGET = 0.05
RATIOS = (("qlora", "lora"), ("dora", "lora"), ("full", "lora"))


@lru_cache(maxsize=None)
def load(path: str | None = None) -> dict:
    with open(path or data.path("throughput.json")) as f:
        return json.load(f)


@dataclass(frozen=True)
class Compared:
    row: dict
    planned: float  # tokens per second
    published: float

    @property
    def ratio(self) -> float:
        return self.planned / self.published


def train_of(row: dict) -> TrainSpec:
    return TrainSpec(method=row["method"], rank=row.get("rank", 16), alpha=row.get("alpha"),
                     target_modules=tuple(row.get("target_modules", "all-linear").split(",")),
                     lora_dropout=row.get("lora_dropout", 0.0), batch_size=row["batch_size"],
                     seq_len=row["seq_len"], gradient_checkpointing=row["gradient_checkpointing"],
                     dtype=row["dtype"], precision=row["precision"], optim=row["optim"],
                     attn_implementation=row["attn_implementation"],
                     modules_to_save=tuple(m for m in row.get("modules_to_save", "").split(",") if m),
                     double_quant=row.get("double_quant", True))


def gpu_of(row: dict, table: dict) -> str:
    return table["sources"][row["source"]]["gpu"]


def summary(compared: list[Compared], key) -> list[tuple[str, int, float, float]]:
    """(group, rows, median error, worst error) per value of ``key(row)``."""
    groups: dict[str, list[float]] = {}
    for c in compared:
        groups.setdefault(key(c.row), []).append(abs(c.ratio - 1))
    return [(g, len(e), statistics.median(e), max(e)) for g, e in sorted(groups.items())]


def planned_tokens_per_second(row: dict, table: dict) -> float:
    """The planner's tokens per second for one published row (its source's GPU)."""
    models = table.get("models", {})
    name = row["model"]
    model = model_from_config(dict(models[name]), name) if name in models else get_model(name)
    gpu = get_gpu(table["sources"][row["source"]]["gpu"])
    train = train_of(row)
    dtype, _ = resolve_dtype(train.dtype, gpu.bf16, gpu.name)
    st = step_time(model, gpu, train, dtype)
    acc = row.get("accumulation", 1)
    return acc * train.tokens / iteration_seconds(st, acc)


def compare(table: dict | None = None) -> list[Compared]:
    table = table or load()
    return [Compared(r, planned_tokens_per_second(r, table), r["tokens_per_second"]) for r in table["rows"]]


def _setting(row: dict, *without: str) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items()
                        if k not in ("tokens_per_second", "note", "method", "precision", "rank", "alpha",
                                     "lora_dropout", "target_modules", "modules_to_save", *without)))


ADAPTER_SETTINGS = ("rank", "alpha", "lora_dropout", "target_modules")


def _same_adapter(a: dict, b: dict) -> bool:
    """Two adapter rows compare only with the same adapter (rank, alpha, dropout, targets); a row
    without an adapter (full fine-tuning) compares with any."""
    if a["method"] == "full" or b["method"] == "full":
        return True
    return all(str(a.get(k)) == str(b.get(k)) for k in ADAPTER_SETTINGS)


def ratio_pairs(compared: list[Compared]) -> list[dict]:
    """Method pairs (and checkpointing on / off) of one source under otherwise equal settings
    (two adapter methods: the same adapter, :func:`_same_adapter`): planned ratio, published
    ratio, and |planned / published - 1|."""
    out = []
    for a_method, b_method in RATIOS:
        for a in (c for c in compared if c.row["method"] == a_method):
            for b in (c for c in compared if c.row["method"] == b_method):
                if _setting(a.row) == _setting(b.row) and _same_adapter(a.row, b.row):
                    out.append(_pair(f"{a_method}/{b_method}", a, b))
    for a in (c for c in compared if c.row["gradient_checkpointing"]):
        for b in (c for c in compared if not c.row["gradient_checkpointing"]):
            if (_setting(a.row, "gradient_checkpointing") == _setting(b.row, "gradient_checkpointing")
                    and a.row["method"] == b.row["method"] and _same_adapter(a.row, b.row)):
                out.append(_pair("gc on/off", a, b))
    return out


def _pair(name: str, a: Compared, b: Compared) -> dict:
    planned, published = a.planned / b.planned, a.published / b.published
    return {"pair": name, "source": a.row["source"], "model": a.row["model"],
            "batch_size": a.row["batch_size"], "seq_len": a.row["seq_len"], "planned": planned,
            "published": published, "error": abs(planned / published - 1)}


def markdown(table: dict | None = None) -> str:
    """The report section: every row planned against published, the median error, the ratios."""
    table = table or load()
    compared = compare(table)
    errors = [abs(c.ratio - 1) for c in compared]
    median = statistics.median(errors)
    lines = ["", "## Planned / published tokens per second (a report, not a gate)", "",
             "Each published row planned with the default efficiency factors on the source's GPU "
             "(data/throughput.json; sources and what each leaves unstated below).", "",
             "| source | model | method | batch | seq | gc | published tok/s | planned tok/s | planned / published |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in compared:
        r = c.row
        lines.append(f"| {r['source']} | {r['model']} | {r['method']} | {r['batch_size']} | {r['seq_len']} | "
                     f"{'on' if r['gradient_checkpointing'] else 'off'} | {c.published:,.0f} | {c.planned:,.0f} | "
                     f"{c.ratio:.2f} |")
    met = "met" if median < ERROR_TARGET else "NOT met"
    worst_met = "met" if max(errors) < WORST_TARGET else "NOT met"
    lines += ["", f"Median |planned / published - 1| over {len(compared)} rows: {median:.1%} "
                  f"(target under {ERROR_TARGET:.0%}: {met}); worst {max(errors):.1%} "
                  f"(target under {WORST_TARGET:.0%}: {worst_met}).", ""]
    for title, key in (("GPU", lambda r: gpu_of(r, table)), ("method", lambda r: r["method"])):
        lines += [f"| {title} | rows | median error | worst error |", "|---|---|---|---|"]
        lines += [f"| {g} | {n} | {med:.1%} | {worst:.1%} |" for g, n, med, worst in summary(compared, key)]
        lines.append("")
    pairs = ratio_pairs(compared)
    lines += ["| ratio | source | model | batch | seq | published | planned | error |", "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        lines.append(f"| {p['pair']} | {p['source']} | {p['model']} | {p['batch_size']} | {p['seq_len']} | "
                     f"{p['published']:.3f} | {p['planned']:.3f} | {p['error']:.1%} |")
    within = sum(p["error"] <= RATIO_TARGET for p in pairs)
    checked = sorted({p["pair"] for p in pairs})
    unchecked = [n for n in [f"{a}/{b}" for a, b in RATIOS] + ["gc on/off"] if n not in checked]
    lines += ["", f"Ratios within {RATIO_TARGET:.0%}: {within} of {len(pairs)}"
                  + (f"; not checked (no published pair with stated settings): {', '.join(unchecked)}" if unchecked
                     else "") + ".", "", "Sources:", ""]
    for name, s in table["sources"].items():
        lines.append(f"- {name}: {s['citation']}, {s['url']}. Versions: {s['versions']}. Missing: {s['missing']}.")
    lines += ["", "Left out:", ""] + [f"- {e['source']} ({e['url']}): {e['why']}." for e in table["excluded"]]
    return "\n".join(lines) + "\n"
