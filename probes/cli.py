"""`probe`: a thin click layer over probes.run and probes.store. No arithmetic here."""
from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path

import click

from planner import CatalogError, ModelSpec, get_model
from planner.model.catalog import UnknownArchitecture
from planner.cli.exits import ERROR, fail
from planner.cli.options import adapter_options, parallel_options, parse_names, parse_targets, training_options
from planner.cli.recipe_options import recipe_option, recipe_settings, resolve_targets, with_recipe
from planner.time.calibration import measured_speed
from planner.model.specs import DTYPES, METHODS, OPTIMIZERS, TrainSpec
from planner.units import GIB

from . import quiet_libraries

DEFAULT_MODEL = "qwen2.5-0.5b"


def parse_ints(value: str, name: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); a clear usage error otherwise."""
    try:
        values = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected a comma list of integers, got {value!r}",
                                 param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return tuple(dict.fromkeys(values))


def _gib(value) -> str:
    if value is None:
        return "-"
    return f"{value / GIB:.2f}" if value >= GIB / 10 else f"{value / GIB:.4f}"


def has_kernel_layers(spec) -> bool:
    """Whether a planner model has layers whose kernel path --kernels chooses (Gated DeltaNet,
    Mamba-2, short convolution); False for a model the planner cannot plan (a ProbeModel)."""
    return isinstance(spec, ModelSpec) and any(
        k.layer.mixer is not None or k.layer.deltanet is not None for k in spec.kinds)


def table(rows: list[dict], kernels: bool = False) -> str:
    """The rows as a fixed-width text table (GiB = 2^30 bytes). A ``kernels`` column (after
    ``gc``) when ``kernels`` is true (a hybrid model was probed) or a row ran other kernels than
    auto; without it the table is the same as before the results table had the column."""
    kernels = kernels or any((r.get("kernels") or "auto") != "auto" for r in rows)
    head = ("model", "method", "bs", "seq", "gc", *(("kernels",) if kernels else ()), "device", "status",
            "alloc GiB", "reserved", "used", "fwd", "bwd", "optim", "step s", "tok/s", "planned", "ratio",
            "plan tok/s", "MFU")
    left = head.index("status") + 1  # text columns left-aligned, figures right-aligned
    lines = []
    for r in rows:
        speed = measured_speed(r)
        lines.append((
            r["model"], r["method"], str(r["batch_size"]), str(r["seq_len"]),
            "yes" if r["gradient_checkpointing"] else "no",
            *((r.get("kernels") or "auto",) if kernels else ()), r["device"], r["status"],
            _gib(r["peak_allocated_bytes"]), _gib(r["peak_reserved_bytes"]),
            _gib(r["device_used_bytes"]), _gib(r["forward_peak_bytes"]),
            _gib(r["backward_peak_bytes"]), _gib(r["optimizer_peak_bytes"]),
            "-" if r["step_time_s"] is None else f"{r['step_time_s']:.2f}",
            "-" if r["tokens_per_second"] is None else f"{r['tokens_per_second']:.0f}",
            _gib(r["planned_peak_allocated_bytes"]),
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
            f"{speed[0]:.0f}" if speed else ("n/c" if r["device"] == "cpu" else "-"),
            f"{speed[1]:.0%}" if speed else ("n/c" if r["device"] == "cpu" else "-"),
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)]
    return "\n".join(out)


def warn_emulated_bf16(probes) -> None:
    """On a CPU without native bf16 a real bf16 step is emulated, about 100 times slower: say so
    before starting, with a rough time per probe, and point to the exact trace."""
    from planner.model import counts

    from .build import device_dtype
    from .cpu import emulated_step_seconds, has_native_bf16

    slow = [p for p in probes if device_dtype(p.train.dtype, "cpu")[0] == "bf16"]
    if not slow or has_native_bf16():
        return
    for p in slow:
        if p.spec is None:
            estimate = "an unknown time"
        else:
            seconds = emulated_step_seconds(counts.total_params(p.spec), p.train.tokens) * (p.warmup + p.steps)
            estimate = f"about {seconds / 60:.0f} min" if seconds >= 90 else f"about {seconds:.0f} s"
        click.echo(f"probe: warning: this CPU has no native bf16 (AVX512-BF16 or AMX): torch emulates it, and "
                   f"{p.label} ({p.warmup + p.steps} steps) may take {estimate}; --device fake traces the same "
                   "step's memory exactly in seconds", err=True)


def resolve_model(name: str, revision: str | None = None):
    """``--model``: the planner's model (a ModelSpec), or, for a config whose model_type the
    planner's architecture table lacks, what the builder needs to build it anyway (a
    probes.build.ProbeModel, measured with no planned figure). ValueError / CatalogError
    (one line) for anything else: an unknown name, a config that is not a decoder."""
    try:
        return get_model(name, revision)
    except UnknownArchitecture as exc:
        from .build import from_unknown

        return from_unknown(exc)


def notes(rows: list[dict], extra: tuple[str, ...] = ()) -> str:
    """The lines under the table: units, what was planned, each row's problem, then ``extra``."""
    settings = next((r for r in rows if r["plan_gpu"]), rows[0])
    planned = (f"planned = plan on {settings['plan_gpu']} with dtype {settings['dtype']}, "
               f"precision {settings['precision']} (default autocast = HF Trainer bf16/fp16=True)."
               if settings["plan_gpu"] else "planned: none (see the notes below).")
    text = [f"GiB = 2^30 bytes. alloc = peak torch allocations (tracker peak on cpu/fake); {planned}"]
    if any(r["device"] == "cpu" and r["step_time_s"] is not None for r in rows):
        text.append("step s and tok/s of cpu rows time a CPU step: not comparable to a GPU plan "
                    "(n/c: no planned speed, no MFU).")
    for r in rows:
        if r["status"] != "ok":
            text.append(f"{r['model']} {r['method']} bs{r['batch_size']} seq{r['seq_len']}: "
                        f"{r['status']}: {r['error']}")
    text += [f"note: {n}" for n in extra]
    return "\n".join(text)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "models", multiple=True, default=(DEFAULT_MODEL,), show_default=True,
              help="Catalog alias (7b, llama-3.1-8b, qwen2.5-0.5b, ...), any Hub model id (ORG/NAME: built "
                   "from its config.json, no remote code), or a local config.json path (any decoder "
                   "transformers builds; one the planner cannot plan is measured with no planned figure). "
                   "Repeatable.")
@click.option("--revision", default=None, help="Branch, tag or commit of the Hub model ids  [default: main]")
@recipe_option
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS + ("all",)),
              help="Method(s) to probe (repeatable, or 'all')  [default: lora]")
@adapter_options
@click.option("--batch-size", default="1", show_default=True,
              help="Batch size, or a comma list for a sweep (1,2,4).")
@click.option("--seq-len", default="512", show_default=True,
              help="Sequence length, or a comma list for a sweep (256,512).")
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
              help="auto = bf16 where the device has it (CPU, fake, CUDA sm80+), else fp16.")
@click.option("--optim", default="adamw_torch", show_default=True, type=click.Choice(OPTIMIZERS),
              help="bitsandbytes 8-bit / paged optimizers need CUDA (a row with status "
                   "'unsupported' elsewhere).")
@training_options
@parallel_options
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(("auto", "cuda", "cpu", "fake")),
              help="cuda: torch.cuda + NVML; cpu: a real step, byte tracker; fake: the same step "
                   "traced on fake tensors, no memory (exact; any model size). auto: cuda if "
                   "present, else fake.")
@click.option("--steps", default=None, type=int,
              help="Measured steps  [default: 3 on cuda, 1 on cpu/fake]")
@click.option("--warmup", default=None, type=int,
              help="Warm-up steps, not measured (at least 1)  [default: 2 on cuda, 1 on cpu/fake]")
@click.option("--weights", default=None, type=click.Path(exists=True, file_okay=False),
              help="Load local safetensors weights (a save_pretrained folder) instead of random init.")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Results table to append to  [default: data/probes/results.csv]")
@click.option("--json", "as_json", is_flag=True,
              help='Print only {"rows": [...]} on stdout (bytes as integers).')
@click.option("--force", is_flag=True, help="Measure on a GPU that other processes use.")
def main(models, revision, recipe_paths, methods, rank, alpha, target_modules, target_parameters, lora_dropout, modules_to_save, batch_size, seq_len,
         gradient_checkpointing, dtype, precision, optim, quant_type, double_quant, attn_implementation, kernels, num_gpus,
         sharding, offload, device, steps, warmup, weights, output, as_json, force):
    """Measure what fine-tuning really uses: build the model (random init from its config,
    or --weights), apply the method with peft / bitsandbytes as a training script
    does, run warm-up and measured steps on synthetic tokens, and record peak memory
    (allocated / reserved / device used, per phase: forward, backward, optimizer), speed,
    and the planner's prediction with the ratio measured / planned.

    \b
    Examples:
      probe --method qlora
      probe --method lora --model 7b --device fake
      probe --method all --model qwen2.5-0.5b --batch-size 1,2,4 --seq-len 256,512 --device fake
      probe --method dora --model 8b --device fake --seq-len 2048 --gradient-checkpointing --json
      probe --method lora --model 8b --device fake --num-gpus 2 --sharding fsdp
      torchrun --nproc-per-node 2 -m probes.cli --device cuda --num-gpus 2 --sharding fsdp

    Several GPUs (--num-gpus N --sharding ddp|fsdp): the memory of rank 0, traced with torch's
    fake process group on --device fake, or measured per rank under torchrun on --device cuda
    (rank 0 writes the rows; the device name says which rank of how many, under which sharding).

    Every row is appended to the results table (data/probes/results.csv, or --output).
    Exit codes: 0 done (oom / unsupported rows included), 1 error, 2 bad usage or input.
    """
    from planner import plan as planner_plan

    recipe_notes = ()
    if recipe_paths:  # the recipe's settings where no flag is given
        p, recipe_notes = with_recipe(click.get_current_context(), recipe_paths, "probe")
        (models, revision, methods, rank, alpha, target_modules, target_parameters, lora_dropout, modules_to_save,
         batch_size, seq_len, gradient_checkpointing, dtype, precision, optim, quant_type, double_quant,
         attn_implementation, num_gpus, sharding, offload) = recipe_settings(p)
    chosen = ("lora",) if not methods else METHODS if "all" in methods else tuple(dict.fromkeys(methods))
    sizes = parse_ints(batch_size, "--batch-size")
    lengths = parse_ints(seq_len, "--seq-len")
    try:
        specs = [resolve_model(m, revision) for m in models]
        target_modules = resolve_targets(target_modules, [s for s in specs if isinstance(s, ModelSpec)], recipe_paths)
        trains = [TrainSpec(method=m, rank=rank, alpha=alpha, target_modules=parse_targets(target_modules),
                            target_parameters=parse_names(target_parameters),
                            lora_dropout=lora_dropout, attn_implementation=attn_implementation, kernels=kernels,
                         modules_to_save=parse_names(modules_to_save),
                            batch_size=b, seq_len=s, gradient_checkpointing=gradient_checkpointing,
                            dtype=dtype, precision=precision, optim=optim, quant_type=quant_type,
                            double_quant=double_quant, num_gpus=num_gpus, sharding=sharding, offload=offload)
                  for m in chosen for b in sizes for s in lengths]
        for spec in (s for s in specs if isinstance(s, ModelSpec)):  # bad settings (rank too
            for train in trains:  # large, ...) fail before anything runs
                planner_plan(spec, "h100-80gb", train)  # a bf16 GPU: auto resolves as on cpu / fake
    except (CatalogError, ValueError) as exc:
        fail(str(exc), prog="probe")

    from . import run as runner
    from . import store
    from .cuda import GpuBusy

    resolved = runner.resolve_device(device)
    if device == "auto" and resolved == "fake":
        click.echo("probe: no CUDA GPU is visible: tracing the step on fake tensors (exact torch "
                   "allocations, no timing); --device cpu runs a real CPU step", err=True)
    if resolved == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda: no CUDA GPU is visible (use --device cpu or fake)", prog="probe")
    try:
        probes = [runner.make_probe(spec, train, resolved, warmup, steps, weights, force)
                  for spec in specs for train in trains]
    except ValueError as exc:
        fail(str(exc), prog="probe")
    path = output or store.default_path()
    if Path(path).exists():
        try:  # a foreign or malformed table is refused before any measuring
            store.load_rows(path)
        except store.StoreError as exc:
            fail(str(exc), ERROR, prog="probe")

    quiet_libraries()
    run_id = uuid.uuid4().hex[:12]
    rows = []
    if resolved == "cpu":
        warn_emulated_bf16(probes)

    def progress(kind: str, k: int, n: int, seconds: float) -> None:
        click.echo(f"  {kind} step {k}/{n}: {seconds:.1f} s", err=True)

    measure_fn = functools.partial(runner.measure, on_step=progress) if resolved == "cpu" else None
    import os

    writer = not (resolved == "cuda" and num_gpus > 1) or os.environ.get("RANK", "0") == "0"
    for i, probe in enumerate(probes, 1):
        click.echo(f"[{i}/{len(probes)}] {probe.label} ...", err=True)
        try:
            row = runner.run(probe, run_id, measure_fn)
        except GpuBusy as exc:
            fail(str(exc), ERROR, prog="probe")
        except Exception as exc:  # noqa: BLE001 - one line, then the exit code
            fail(f"{probe.label}: {exc.__class__.__name__}: {exc}", ERROR, prog="probe")
        if not writer:  # another torchrun rank: rank 0 writes
            continue
        try:
            store.append([row], path)
        except store.StoreError as exc:
            fail(str(exc), ERROR, prog="probe")
        rows.append(row)
    extra = tuple(dict.fromkeys(recipe_notes + tuple(n for probe in probes for n in probe.notes)))
    if not writer:
        return
    if as_json:
        click.echo(json.dumps({"rows": rows}, indent=1))
        for line in extra:
            click.echo(f"probe: note: {line}", err=True)
    else:
        click.echo(table(rows, kernels=any(has_kernel_layers(p.spec) for p in probes)))
        click.echo(notes(rows, extra))
        click.echo(f"appended {len(rows)} row(s) to {path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
