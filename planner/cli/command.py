"""`plan`: a thin click layer over planner.plan. No arithmetic here."""
from __future__ import annotations

import click

from planner.cli import render
from planner.model.catalog import CatalogError, get_gpus, get_model, gpu_names, model_names, get_gpu
from planner.cli.exits import fail
from planner.cli.sweep import check_data_options, sweep
from planner.time import roofline
from planner.cli.options import adapter_options, parallel_options, parse_names, parse_targets, training_options
from .recipe_options import recipe_option, recipe_settings, resolve_targets, with_recipe
from planner.model.specs import DTYPES, METHODS, OPTIMIZERS, TrainSpec
from planner.units import GIB


def output_options(f):
    """--table (default), --json, --csv: shared by the project's commands."""
    f = click.option("--csv", "fmt", flag_value="csv", help="One CSV row per plan.")(f)
    f = click.option("--json", "fmt", flag_value="json",
                     help='Print only a JSON object {"plans": [...]} (the stable contract).')(f)
    f = click.option("--table", "fmt", flag_value="table", default=True, help="A table per GPU (default).")(f)
    return f


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "models", multiple=True, default=("7b",), show_default=True,
              help="Catalog alias (7b, llama-3.1-8b, qwen2.5-0.5b, ...), any Hub model id (ORG/NAME: its "
                   "config.json and safetensors headers, never the weights; the local HF cache first), or a "
                   "local config.json path. Repeatable.")
@click.option("--revision", default=None, help="Branch, tag or commit of the Hub model ids  [default: main]")
@recipe_option
@click.option("--gpu", "gpus", multiple=True, default=("t4",), show_default=True,
              help="GPU alias (t4, l4, a10g, rtx4090, a100-80gb, h100, ...) or 'all'. Repeatable.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS + ("all",)),
              help="Method(s) to plan; default all. rslora has lora's memory.")
@adapter_options
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--seq-len", default=512, show_default=True, type=int)
@training_options
@parallel_options
@click.option("--dtype", default="auto", show_default=True, type=click.Choice(DTYPES),
              help="auto = bf16 where the GPU has it, else fp16.")
@click.option("--optim", default="adamw_torch", show_default=True, type=click.Choice(OPTIMIZERS))
@click.option("--max-batch-size", "search_batch", is_flag=True,
              help="Also search the largest batch size that fits, per method and GPU.")
@click.option("--max-seq-len", "search_seq", is_flag=True,
              help="Also search the largest sequence length that fits, per method and GPU.")
@click.option("--dataset-tokens", type=int, default=None,
              help="Tokens in the training set: also plan the hours for the whole run (with --epochs).")
@click.option("--epochs", type=int, default=1, show_default=True, help="Passes over --dataset-tokens.")
@click.option("--mean-len", type=int, default=None,
              help="The data's mean sample length in tokens (--seq-len is the longest): time padded batches "
                   "or packed rows of real data; memory still plans the longest batch  [default: --seq-len]")
@click.option("--packing/--no-packing", default=False, show_default=True,
              help="Samples packed into full --seq-len rows (TRL packing), or each batch padded to its longest.")
@click.option("--host", type=click.Choice(tuple(roofline.HOSTS)), default=roofline.DEFAULT_HOST, show_default=True,
              help="The CPU that launches the step's eager ops: workstation (a desktop or server core, about "
                   "10 us per op) or cloud-2vcpu (a 2-vCPU VM such as Colab's or Kaggle's, about 20 us); small "
                   "models on fast GPUs wait on it.")
@click.option("--calibrated/--no-calibrated", default=True, show_default=True,
              help="Use CUDA context and allocator terms, and the time model's efficiency factors, calibrated "
                   "from real GPU rows in data/probes where the GPU family has any (the output says so); else "
                   "the documented estimates.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw the breakdowns as stacked bars per method, the GPU's memory as a line, "
                   "into this file (.png, .svg or .pdf). Needs matplotlib (pip install 'ftmem[plot]').")
@click.option("--list-models", is_flag=True, help="List the catalog models and exit.")
@click.option("--list-gpus", is_flag=True, help="List the catalog GPUs and exit.")
@output_options
def main(models, revision, recipe_paths, gpus, methods, rank, alpha, target_modules, target_parameters, lora_dropout, modules_to_save, batch_size, seq_len,
         gradient_checkpointing, dtype, precision, optim, quant_type, double_quant, attn_implementation,
         kernels, num_gpus, sharding, offload, search_batch, search_seq, dataset_tokens, epochs, mean_len, packing, host,
         calibrated, plot_path,
         list_models, list_gpus, fmt):
    """Predict the GPU memory of fine-tuning a model with full, LoRA, rsLoRA, QLoRA, DoRA and
    QDoRA, as a named breakdown, the step time and tokens per second, and say what fits and
    what to use.

    \b
    Examples:
      plan --model 7b --gpu t4
      plan --model llama-3.1-8b --gpu rtx4090 --gpu a100-80gb --method qlora --method lora
      plan --model qwen2.5-7b --gpu l4 --seq-len 2048 --gradient-checkpointing --max-batch-size
      plan --model ./config.json --gpu all --method qlora --json
      plan --model 7b --gpu t4 --gpu rtx4090 --plot breakdown.png
      plan --model 7b --gpu a100-80gb --dataset-tokens 50000000 --epochs 3
      plan --model qwen2.5-0.5b --gpu t4 --seq-len 1024 --mean-len 300 --batch-size 4 --host cloud-2vcpu
      plan --model 8b --gpu rtx4090 --num-gpus 2 --sharding fsdp

    Sizes are GiB (2^30 bytes), as nvidia-smi reports them.
    """
    if list_models:
        for name in model_names():
            m = get_model(name)
            click.echo(f"{name:<16} {m.hf_id}")
        return
    if list_gpus:
        for name in gpu_names():
            g = get_gpu(name)
            click.echo(f"{name:<12} {g.memory_bytes / GIB:7.2f} GiB  {g.full_name}")
        return
    recipe_notes = ()
    if recipe_paths:  # the recipe's settings where no flag is given
        p, recipe_notes = with_recipe(click.get_current_context(), recipe_paths, "plan")
        (models, revision, methods, rank, alpha, target_modules, target_parameters, lora_dropout, modules_to_save,
         batch_size, seq_len, gradient_checkpointing, dtype, precision, optim, quant_type, double_quant,
         attn_implementation, num_gpus, sharding, offload) = recipe_settings(p)
    chosen = METHODS if not methods or "all" in methods else tuple(dict.fromkeys(methods))
    try:
        check_data_options(dataset_tokens, epochs, mean_len, seq_len)
        model_specs = [get_model(m, revision) for m in models]
        target_modules = resolve_targets(target_modules, model_specs, recipe_paths)
        base = TrainSpec(method=chosen[0], rank=rank, alpha=alpha, target_modules=parse_targets(target_modules),
                         target_parameters=parse_names(target_parameters),
                         lora_dropout=lora_dropout, attn_implementation=attn_implementation, kernels=kernels,
                         modules_to_save=parse_names(modules_to_save),
                         batch_size=batch_size, seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
                         dtype=dtype, precision=precision, optim=optim, quant_type=quant_type,
                         double_quant=double_quant, num_gpus=num_gpus, sharding=sharding, offload=offload)
        outcome = sweep(model_specs, get_gpus(gpus), chosen, base, named=bool(methods) and "all" not in methods,
                        search_batch=search_batch, search_seq=search_seq, dataset_tokens=dataset_tokens,
                        epochs=epochs, calibrated=calibrated, mean_len=mean_len, packing=packing, host=host,
                        notes=recipe_notes)
    except (CatalogError, ValueError) as exc:
        fail(str(exc), prog="plan")
    reports = outcome.reports
    skipped = outcome.skipped
    for why in skipped:
        click.echo(f"plan: skipped: {why}", err=True)
    if plot_path:
        from planner.cli import plot

        try:
            plot.save([r.plan for r in reports], plot_path)
        except plot.PlotError as exc:
            fail(str(exc), prog="plan")
        click.echo(f"plan: wrote the plot to {plot_path}", err=True)
    if fmt == "json":
        click.echo(render.to_json(reports))
    elif fmt == "csv":
        click.echo(render.to_csv(reports), nl=False)
    else:
        click.echo("\n\n".join(g.table for g in outcome.groups))


if __name__ == "__main__":  # pragma: no cover
    main()
