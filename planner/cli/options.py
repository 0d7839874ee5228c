"""Click options shared by `plan` and `probe`: the training settings, named the same in both,
so that any plan can be probed as it is. Torch-free (the planner imports it)."""
from __future__ import annotations

import click

from planner.model.specs import ALL_LINEAR, ATTN_IMPLEMENTATIONS, KERNELS, OFFLOADS, PRECISIONS, QUANT_TYPES, SHARDINGS


def parse_targets(value: str) -> tuple[str, ...]:
    """'q_proj, v_proj' -> ('q_proj', 'v_proj'); any mention of all-linear means all-linear."""
    names = parse_names(value)
    return (ALL_LINEAR,) if ALL_LINEAR in names else names


def parse_names(value: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'); '' -> ()."""
    return tuple(t.strip() for t in value.split(",") if t.strip())


def adapter_options(f):
    """--rank/-r, --alpha, --target-modules, --target-parameters, --lora-dropout, --modules-to-save."""
    f = click.option("--modules-to-save", default="", show_default=False,
                     help="Comma list of whole modules to train beside the adapters (peft modules_to_save): "
                          "embed_tokens, lm_head, as after adding tokens. Each is a trainable copy with its "
                          "gradient and optimizer states.")(f)
    f = click.option("--lora-dropout", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0, max_open=True),
                     help="peft's lora_dropout (recipes use 0.05-0.1): each adapted module keeps a dropout "
                          "mask of its input.")(f)
    f = click.option("--target-parameters", default="", show_default=False,
                     help="Comma list of fused parameters to adapt as well (peft target_parameters), e.g. "
                          "experts.gate_up_proj,experts.down_proj for a mixture of experts.")(f)
    f = click.option("--target-modules", default=ALL_LINEAR, show_default=True,
                     help="Comma list of module names (q_proj,v_proj) or all-linear.")(f)
    f = click.option("--alpha", default=None, type=float, help="LoRA alpha  [default: 2*rank]")(f)
    f = click.option("--rank", "-r", default=16, show_default=True, type=int, help="LoRA rank.")(f)
    return f


def training_options(f):
    """--gradient-checkpointing, --precision, --quant-type, --double-quant, --attn-implementation, --kernels."""
    f = click.option("--attn-implementation", default="auto", show_default=True, type=click.Choice(ATTN_IMPLEMENTATIONS),
                     help="auto: what transformers picks for the model (SDPA; eager where the model needs it). "
                          "eager keeps seq x seq probabilities per layer; flash_attention_2 is planned as the "
                          "flash kernel (traced with SDPA's flash kernel on a CPU).")(f)
    f = click.option("--kernels", default="auto", show_default=True, type=click.Choice(KERNELS),
                     help="Kernels of the hybrids' recurrent layers: Gated DeltaNet (Qwen3.5, Qwen3-Next), Mamba-2 "
                          "and short convolutions (Granite-4.0-H, Nemotron-H, LFM2). torch: transformers' torch "
                          "fallbacks (torch_chunk_gated_delta_rule, Mamba-2's chunked scan in torch ops, F.conv1d), "
                          "which keep per-chunk tensors; fused: flash-linear-attention's chunked gated delta rule, "
                          "mamba-ssm's mamba_split_conv1d_scan_combined, causal-conv1d; auto: what transformers "
                          "picks when those packages are installed (it looks them up at import and falls back to "
                          "torch without them): fused where a kernel exists, since GPU users install them as the "
                          "model cards say. Each plan says which path it assumes.")(f)
    f = click.option("--double-quant/--no-double-quant", default=True, show_default=True)(f)
    f = click.option("--quant-type", default="nf4", show_default=True, type=click.Choice(QUANT_TYPES))(f)
    f = click.option("--precision", default="autocast", show_default=True, type=click.Choice(PRECISIONS),
                     help="autocast: HF Trainer bf16/fp16=True on a 16-bit model; pure: plain loop, no "
                          "autocast; mixed: fp32 master weights + autocast.")(f)
    f = click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=False, show_default=True,
                     help="Non-reentrant activation checkpointing of every decoder layer.")(f)
    return f


def parallel_options(f):
    """--num-gpus, --sharding, --offload: one data-parallel rank's memory (planner.memory.sharding)."""
    f = click.option("--offload", default="none", show_default=True, type=click.Choice(OFFLOADS),
                     help="Offload to the CPU: optimizer (zero2, zero3) or params (zero3; fsdp: "
                          "CPUOffloadPolicy, parameters, gradients and the optimizer step).")(f)
    f = click.option("--sharding", default="none", show_default=True, type=click.Choice(SHARDINGS),
                     help="Data parallelism over --num-gpus: ddp, fsdp (FSDP2 per decoder layer), "
                          "zero2 / zero3 (DeepSpeed ZeRO, from formulas).")(f)
    f = click.option("--num-gpus", default=1, show_default=True, type=int,
                     help="GPUs (data-parallel ranks); --batch-size is per GPU. Needs --sharding.")(f)
    return f
