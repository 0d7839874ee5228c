"""LLaMA-Factory's YAML (``llamafactory-cli train config.yaml``).

Key names and defaults, from LLaMA-Factory src/llamafactory/hparams/:
- model_args.py: ``model_name_or_path``, ``model_revision`` ("main"), ``quantization_bit``
  (None), ``quantization_method`` ("bnb"), ``quantization_type`` ("nf4"),
  ``double_quantization`` (True), ``flash_attn`` ("auto"; disabled, sdpa, fa2, fa3),
  ``disable_gradient_checkpointing`` (False: checkpointing is on unless disabled),
  ``use_unsloth``, ``use_unsloth_gc``, ``enable_liger_kernel``, ``upcast_layernorm``;
- finetuning_args.py: ``stage`` ("sft"), ``finetuning_type`` ("lora"), ``lora_rank`` (8),
  ``lora_alpha`` (None: lora_rank * 2), ``lora_dropout`` (0.0), ``lora_target`` ("all"),
  ``additional_target`` (modules_to_save), ``use_dora``, ``use_rslora`` (False), ``pure_bf16``;
- data_args.py: ``cutoff_len`` (2048), ``packing``, ``neat_packing``;
- training_args.py extends transformers' Seq2SeqTrainingArguments: ``per_device_train_batch_size``
  (8), ``bf16`` / ``fp16`` (False), ``optim`` ("adamw_torch_fused" in transformers 5), ``deepspeed``.
"""
from __future__ import annotations

from pathlib import Path

from . import sharding
from .keys import Keys, RecipeError
from .recipe import Draft, Recipe, attention, optimizer, targets

NAME = "LLaMA-Factory"
SRC = "LLaMA-Factory src/llamafactory/hparams"
HF_SRC = "transformers TrainingArguments"
MARKERS = ("finetuning_type", "stage", "lora_target", "cutoff_len", "template", "quantization_bit", "lora_rank")

NO_MEMORY = frozenset({
    "trust_remote_code", "do_train", "do_eval", "dataset", "eval_dataset", "dataset_dir", "template", "max_samples",
    "overwrite_cache", "preprocessing_num_workers", "dataloader_num_workers", "output_dir", "logging_steps",
    "save_steps", "plot_loss", "overwrite_output_dir", "save_only_model", "report_to", "gradient_accumulation_steps",
    "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_ratio", "warmup_steps",
    "ddp_timeout", "resume_from_checkpoint", "val_size", "per_device_eval_batch_size", "eval_strategy", "eval_steps",
    "seed", "run_name", "weight_decay", "max_grad_norm", "loraplus_lr_ratio", "create_new_adapter",
    "adapter_name_or_path", "export_dir", "save_strategy", "logging_dir", "cache_dir", "tokenized_path",
    "streaming", "buffer_size", "mix_strategy", "interleave_probs", "train_on_prompt", "mask_history",
    "default_system", "enable_thinking", "tool_format", "hf_hub_token", "ms_hub_token", "om_hub_token",
    "use_fast_tokenizer", "resize_vocab", "split_special_tokens", "new_special_tokens", "image_max_pixels",
    "video_max_pixels", "pref_beta", "pref_loss", "dpo_label_smoothing", "ignore_pad_token_for_loss", "bf16_full_eval",
    "print_param_status", "include_num_input_tokens_seen", "flash_attn_impl",
})
UNMODELLED = {
    "packing": "packed sequences are planned as per_device_train_batch_size x cutoff_len tokens (the same count)",
    "neat_packing": "packed sequences are planned as per_device_train_batch_size x cutoff_len tokens",
    "use_unsloth": "Unsloth's kernels are not modelled (the plan is of transformers' modules and peft)",
    "use_unsloth_gc": "Unsloth's gradient checkpointing offloads checkpoints to the host; not modelled: planned "
                      "kept on the GPU (an upper bound)",
    "enable_liger_kernel": "Liger kernels are not modelled (its fused cross-entropy keeps no logits: "
                           "activations/logits is an upper bound)",
    "upcast_layernorm": "fp32 norm weights are not modelled (a few MiB)",
    "upcast_lmhead_output": "the fp32 lm_head output is planned as the loss's fp32 upcast",
    "use_galore": "GaLore's projected optimizer states are not modelled: planned with AdamW",
    "use_apollo": "APOLLO's optimizer states are not modelled: planned with AdamW",
    "use_badam": "BAdam (one block trained at a time) is not modelled: planned as full fine-tuning",
    "pissa_init": "PiSSA's initialisation does not change a step's memory (its SVD at load does)",
    "rope_scaling": "RoPE scaling does not change the planned tensors",
    "shift_attn": "shift short attention is not modelled", "mixture_of_depths": "mixture of depths is not modelled",
    "use_llama_pro": "LLaMA Pro's added blocks are not modelled", "freeze_vision_tower": "the vision tower is not "
                                                                                        "planned (text decoder only)",
    "torch_compile": "torch.compile's fused kernels are not modelled",
}


def detect(data: dict) -> bool:
    return "model_name_or_path" in data and any(k in data for k in MARKERS)


def read(data: dict, path: Path) -> Recipe:
    keys = Keys(data, path.name)
    d = Draft(NAME, keys)
    d.model = keys.get("model_name_or_path", str)
    d.revision = keys.get("model_revision", str)
    stage = keys.choice("stage", ("pt", "sft", "rm", "ppo", "dpo", "kto"), "sft")
    if stage in ("rm", "ppo", "dpo", "kto"):
        d.unmodelled("stage", f"stage {stage}: a value head, reference model or several sequences per example are "
                              "not modelled; the plan is of one SFT step of the trained model")
    kind = keys.choice("finetuning_type", ("lora", "oft", "freeze", "full"))
    if kind in ("oft", "freeze"):
        raise RecipeError(f"{path.name}: finetuning_type {kind} is not planned (lora, full)")
    kind = kind or "lora"
    bits = keys.get("quantization_bit", int)
    qmethod = keys.choice("quantization_method", ("bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4",
                                                  "fp8", "bitsandbytes"), "bnb")
    if bits is not None and bits not in (2, 3, 4, 8):
        raise RecipeError(f"{path.name}: quantization_bit must be 2, 3, 4 or 8, got {bits}")
    four = bits == 4 and qmethod in ("bnb", "bitsandbytes")
    if bits is not None and not four:
        d.unmodelled("quantization_bit", f"{bits}-bit {qmethod} weights are not modelled: planned with 16-bit base "
                                         "weights (an upper bound on weights/base)")
    dora, rslora = keys.get("use_dora", bool, False), keys.get("use_rslora", bool, False)
    if kind == "full":
        method = "full"
    else:
        method = ("qdora" if dora else "qlora") if four else ("dora" if dora else "rslora" if rslora else "lora")
        rank = keys.get("lora_rank", int)
        d.set("rank", rank or 8, None if rank else f"{SRC}/finetuning_args.py: lora_rank 8")
        alpha = keys.get("lora_alpha", (int, float))
        d.set("alpha", float(alpha if alpha is not None else 2 * (rank or 8)), None if alpha is not None else
              f"{SRC}/finetuning_args.py: lora_alpha = lora_rank * 2")
        dropout = keys.get("lora_dropout", float)
        d.set("lora_dropout", dropout or 0.0, None if dropout is not None else
              f"{SRC}/finetuning_args.py: lora_dropout 0.0")
        target = keys.get("lora_target", (str, list))
        if target is None:
            d.set("target_modules", "all-linear", f"{SRC}/finetuning_args.py: lora_target all")
        else:
            targets(d, "lora_target", target)
        extra = keys.get("additional_target", (str, list))
        if extra:
            d.modules_to_save("additional_target", extra)
        if four:
            d.set("quant_type", keys.choice("quantization_type", ("nf4", "fp4"), "nf4"))
            d.set("double_quant", keys.get("double_quantization", bool, True))
    d.settings["methods"] = (method,)
    seq = keys.get("cutoff_len", int)
    d.set("seq_len", seq or 2048, None if seq else f"{SRC}/data_args.py: cutoff_len 2048")
    batch = keys.get("per_device_train_batch_size", int)
    d.set("batch_size", batch or 8, None if batch else f"{HF_SRC}: per_device_train_batch_size 8")
    off = keys.get("disable_gradient_checkpointing", bool)
    d.set("gradient_checkpointing", not off, None if off is not None else
          f"{SRC}/model_args.py: disable_gradient_checkpointing false, so checkpointing is on")
    opt = keys.get("optim", str)
    if opt is None:
        d.set("optim", "adamw_torch_fused", f"{HF_SRC}: optim adamw_torch_fused")
    else:
        optimizer(d, "optim", opt)
    bf16, fp16, pure = keys.get("bf16", bool, False), keys.get("fp16", bool, False), keys.get("pure_bf16", bool, False)
    if pure:
        d.set("dtype", "bf16")
        d.set("precision", "pure")
    elif bf16 or fp16:
        d.set("dtype", "bf16" if bf16 else "fp16")
    else:
        d.set("dtype", "auto")
        d.note("neither bf16 nor fp16 is set: LLaMA-Factory loads the model in the best dtype the GPU has; "
               "planned with --dtype auto")
    flash = keys.choice("flash_attn", ("auto", "disabled", "sdpa", "fa2", "fa3"))
    attention(d, "flash_attn", {"disabled": "eager"}.get(flash, flash))
    ds = keys.get("deepspeed", (str, dict))
    if ds:
        sharding.deepspeed_reference(d, "deepspeed", ds, path.parent)
    fs = keys.get("fsdp", (str, list))
    if fs:
        sharding.fsdp(d, "fsdp", fs, keys.get("fsdp_config", dict))
    for key in keys.present(UNMODELLED):
        d.unmodelled(key, UNMODELLED[key])
    keys.used.update(k for k in UNMODELLED if k in data)
    return d.finish(NO_MEMORY)
