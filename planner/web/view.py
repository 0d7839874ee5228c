"""What the page shows of an outcome, as Markdown: pure formatting (no gradio, no arithmetic
beyond units), one table per model x GPU with a column per method, as ``plan`` prints it."""
from __future__ import annotations

GIB = 1 << 30


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _cell(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _row(label: str, cells: list[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def group_markdown(group) -> str:
    """One model x GPU: fits, headroom, the largest batch and sequence, speed, the advice."""
    reports = list(group.reports)
    plans = [r.plan for r in reports]
    settings = plans[0].settings
    per_gpu = " per GPU" if "num_gpus" in settings else ""
    lines = [f"### {group.model.name} on {group.gpu.name} ({_gib(group.gpu.memory_bytes)} GiB{per_gpu})", "",
             _row("", [p.method for p in plans]), "|---|" + "---:|" * len(plans),
             _row("fits", ["**yes**" if p.fits else "**no**" for p in plans]),
             _row("device used (GiB)", [_gib(p.device_used_bytes) for p in plans]),
             _row("headroom (GiB)", [_gib(p.headroom_bytes) for p in plans])]
    if any(r.max_batch_size is not None for r in reports):
        lines.append(_row(f"max batch size (seq {settings['seq_len']})", [str(r.max_batch_size) for r in reports]))
    if any(r.max_seq_len is not None for r in reports):
        lines.append(_row(f"max seq len (batch {settings['batch_size']})", [str(r.max_seq_len) for r in reports]))
    lines += [_row("step time (s)", [_cell(p.step_seconds, "{:.3f}") for p in plans]),
              _row("tokens / s", [_cell(p.tokens_per_second, "{:,.0f}") for p in plans]),
              _row("peak phase", [p.peak_phase for p in plans])]
    run = next((r.dataset for r in reports if r.dataset is not None), None)
    if run is not None:
        lines.append(_row(f"hours for {run[0]:,} tok x {run[1]}", [_cell(r.total_hours, "{:,.1f}") for r in reports]))
    lines += ["", f"**Recommendation:** {group.recommendation.text}"]
    return "\n".join(lines)


def markdown(outcome) -> str:
    """The whole answer: each model x GPU, then the notes once each and what was skipped."""
    parts = [group_markdown(g) for g in outcome.groups]
    notes = dict.fromkeys(n for p in outcome.plans for n in p.notes)
    if notes:
        parts.append("**Notes**\n\n" + "\n".join(f"- {n}" for n in notes))
    if outcome.skipped:
        parts.append("\n".join(f"- {line}" for line in outcome.skipped))
    return "\n\n".join(parts)
