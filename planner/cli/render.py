"""Table, JSON and CSV output of plans. Formatting only: no arithmetic beyond units."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from planner.fit import Recommendation
from planner.plan import Plan
from planner.model.specs import GpuSpec, ModelSpec, TrainSpec
from planner.units import GIB

CSV_FIELDS = ("model", "gpu", "method", "batch_size", "seq_len", "rank", "alpha", "target_modules",
              "dtype", "precision", "optim", "gradient_checkpointing", "quant_type", "double_quant",
              "lora_dropout", "attn_implementation", "modules_to_save",
              "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "gpu_memory_bytes",
              "fits", "headroom_bytes", "trainable_params", "total_params", "peak_phase",
              "peak_moment", "max_batch_size", "max_seq_len", "step_seconds", "tokens_per_second", "mfu", "total_hours")

PARALLEL_CSV_FIELDS = ("num_gpus", "sharding", "offload")  # only when a plan spans several GPUs


@dataclass(frozen=True)
class Report:
    """One plan with the optional searches the user asked for."""

    plan: Plan
    max_batch_size: int | None = None
    max_seq_len: int | None = None
    total_hours: float | None = None  # with --dataset-tokens: hours for the whole run
    dataset: tuple[int, int] | None = None  # (dataset tokens, epochs) the hours are for
    data: object | None = None  # with --mean-len / --packing: planner.time.data.DataTime


    def to_dict(self) -> dict:
        out = self.plan.to_dict()
        if self.total_hours is not None:
            out["total_hours"] = self.total_hours
        if self.dataset is not None:
            out["dataset_tokens"], out["epochs"] = self.dataset
        if self.data is not None:
            out["data"] = self.data.to_dict()
        if self.max_batch_size is not None:
            out["max_batch_size"] = self.max_batch_size
        if self.max_seq_len is not None:
            out["max_seq_len"] = self.max_seq_len
        return out


def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def header(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, plan: Plan) -> str:
    """One line stating every setting used, so that the output is reproducible (the settings
    a training script adds, dropout, attention and modules_to_save, where not the default)."""
    s = plan.settings
    extra = "".join(f" {k}={v}" for k, v in (("lora_dropout", f"{s['lora_dropout']:g}"),
                                             ("attn_implementation", s["attn_implementation"]),
                                             ("kernels", s.get("kernels", "auto")),
                                             ("modules_to_save", ",".join(s["modules_to_save"])))
                    if v not in ("0", "auto", ""))
    return (f"plan: model={model.name} gpu={gpu.name} ({gib(gpu.memory_bytes)} GiB) "
            f"batch_size={s['batch_size']} seq_len={s['seq_len']} rank={s['rank']} alpha={s['alpha']:g} "
            f"target_modules={','.join(s['target_modules'])} dtype={s['dtype']} precision={s['precision']} "
            f"optim={s['optim']} gradient_checkpointing={'on' if s['gradient_checkpointing'] else 'off'} "
            f"quant_type={s['quant_type']} double_quant={'on' if s['double_quant'] else 'off'}{extra}"
            + (f" num_gpus={s['num_gpus']} sharding={s['sharding']} offload={s['offload']}" if "num_gpus" in s else ""))


def _row(label: str, cells: list[str], width: int) -> str:
    return f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def table(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, reports: list[Report],
          recommendation: Recommendation | None) -> str:
    """Side-by-side breakdown (GiB, as nvidia-smi) of every method on one model and GPU."""
    plans = [r.plan for r in reports]
    # two spaces between columns, however wide a cell (a trillion-parameter total is 17 characters)
    width = max(15, *(len(cell) + 2 for p in plans for cell in (p.method, f"{p.total_params:,}")))
    lines = [header(model, gpu, train, plans[0])]
    notes = dict.fromkeys(n for p in plans for n in p.notes)
    lines += [f"note: {n}" for n in notes]
    lines.append("")
    lines.append(_row("memory (GiB), at the peak", [p.method for p in plans], width))
    keys = [k for k in plans[0].components if any(p.components.get(k, 0) for p in plans)]
    for extra in (k for p in plans for k in p.components):
        if extra not in keys and any(p.components.get(extra, 0) for p in plans):
            keys.append(extra)
    for key in keys:
        lines.append(_row(f"  {key}", [gib(p.components.get(key, 0)) for p in plans], width))
    lines.append(_row("peak allocated", [gib(p.peak_allocated_bytes) for p in plans], width))
    lines.append(_row("peak reserved", [gib(p.peak_reserved_bytes) for p in plans], width))
    lines.append(_row("device used (nvidia-smi)", [gib(p.device_used_bytes) for p in plans], width))
    lines.append(_row("GPU memory" + (" (per GPU)" if "num_gpus" in plans[0].settings else ""),
                      [gib(p.gpu_memory_bytes) for p in plans], width))
    lines.append(_row("fits", ["yes" if p.fits else "no" for p in plans], width))
    lines.append(_row("headroom", [gib(p.headroom_bytes) for p in plans], width))
    lines.append(_row("peak phase", [p.peak_phase for p in plans], width))
    lines.append(_row("peak moment", [p.peak_moment for p in plans], width))
    lines.append(_row("trainable params", [f"{p.trainable_params:,}" for p in plans], width))
    lines.append(_row("total params", [f"{p.total_params:,}" for p in plans], width))
    if any(r.max_batch_size is not None for r in reports):
        lines.append(_row(f"max batch size (seq {train.seq_len})",
                          [str(r.max_batch_size) for r in reports], width))
    if any(r.max_seq_len is not None for r in reports):
        lines.append(_row(f"max seq len (batch {train.batch_size})",
                          [str(r.max_seq_len) for r in reports], width))
    if any(p.time is not None for p in plans):
        lines.append(_row("step time (s)", [_fmt(p.step_seconds, "{:.3f}") for p in plans], width))
        lines.append(_row("tokens / s", [_fmt(p.tokens_per_second, "{:,.0f}") for p in plans], width))
        lines.append(_row("MFU", [_fmt(p.mfu, "{:.0%}") for p in plans], width))
        lines.append(_row("time bound by", [p.time.bound if p.time else "-" for p in plans], width))
    if any(r.data is not None for r in reports):
        lines.append(_row("padded length", [str(r.data.padded_len) if r.data else "-" for r in reports], width))
        lines.append(_row("step time, real data (s)",
                          [_fmt(r.data.step.step_seconds if r.data else None, "{:.3f}") for r in reports], width))
        lines.append(_row("real tokens / s", [_fmt(r.data.real_tokens_per_second if r.data else None, "{:,.0f}")
                                              for r in reports], width))
    run = next((r.dataset for r in reports if r.dataset is not None), None)
    if run is not None:
        lines.append(_row(f"hours for {run[0]:,} tok x {run[1]}", [_fmt(r.total_hours, "{:,.1f}") for r in reports],
                          width))
    if recommendation is not None:
        lines += ["", f"recommendation: {recommendation.text}"]
    return "\n".join(lines)


def to_json(reports: list[Report]) -> str:
    """The JSON contract: {"plans": [...]}, one object per model x GPU x method."""
    return json.dumps({"plans": [r.to_dict() for r in reports]}, indent=2)


def to_csv(reports: list[Report]) -> str:
    """One row per plan with the scalar fields of the JSON (settings flattened)."""
    buf = io.StringIO()
    parallel = any("num_gpus" in r.plan.settings for r in reports)
    fields = CSV_FIELDS + (PARALLEL_CSV_FIELDS if parallel else ())
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        d = r.to_dict()
        row = {k: v for k, v in d.items() if k in fields}
        row.update({k: v for k, v in d["settings"].items() if k in fields})
        row["target_modules"] = ",".join(d["settings"]["target_modules"])
        row["modules_to_save"] = ",".join(d["settings"]["modules_to_save"])
        writer.writerow(row)
    return buf.getvalue()
