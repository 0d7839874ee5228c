"""transformers' TrainingArguments saved as JSON (``training_args.to_json_string()``, or the
JSON a script passes to ``HfArgumentParser.parse_json_file``), with a peft
``adapter_config.json`` beside it for LoRA / DoRA; the TrainingArguments keys TRL's configs
share (planner.recipes.trl) are read here too.

Defaults, from transformers src/transformers/training_args.py (5.x): ``per_device_train_batch_size``
8, ``gradient_checkpointing`` (or ``activation_checkpointing``, its 5.x name) off, ``bf16`` / ``fp16`` False, ``optim`` "adamw_torch_fused",
``fsdp`` none, ``deepspeed`` none. From peft src/peft/tuners/lora/config.py (LoraConfig):
``r`` 8, ``lora_alpha`` 8, ``lora_dropout`` 0.0, ``target_modules`` None (peft's per-model
default, utils/constants.py TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING),
``use_dora`` / ``use_rslora`` False, ``modules_to_save`` None.
The model, its dtype and its quantization are in the training script, not in these files:
the model is ``base_model_name_or_path`` of the adapter config (or --model).
"""
from __future__ import annotations

from pathlib import Path

from . import sharding
from .keys import Keys, RecipeError, read_json_object
from .recipe import PEFT_DEFAULT, Draft, Recipe, optimizer, targets

NAME = "TrainingArguments"
SRC = "transformers TrainingArguments"
PEFT_SRC = "peft LoraConfig"

# peft's default LoRA targets per model_type, for the model types the planner plans
# (peft src/peft/utils/constants.py: TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING);
# other types have none, and peft asks for target_modules.
PEFT_DEFAULT_TARGETS = {
    "llama": "q_proj,v_proj", "mistral": "q_proj,v_proj", "mixtral": "q_proj,v_proj", "gemma2": "q_proj,v_proj",
    "gemma3_text": "q_proj,v_proj", "qwen2": "q_proj,v_proj", "qwen3": "q_proj,v_proj",
}

TRAINING_NO_MEMORY = frozenset({
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy",
    "prediction_loss_only", "per_device_eval_batch_size", "gradient_accumulation_steps", "eval_accumulation_steps",
    "eval_delay", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
    "log_level", "log_level_replica", "log_on_each_node", "logging_dir", "logging_strategy", "logging_first_step",
    "logging_steps", "logging_nan_inf_filter", "save_strategy", "save_steps", "save_total_limit",
    "save_safetensors", "save_on_each_node", "save_only_model", "seed", "data_seed", "local_rank", "eval_steps",
    "dataloader_num_workers", "dataloader_drop_last", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "run_name", "disable_tqdm", "remove_unused_columns", "label_names",
    "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "ignore_data_skip", "report_to",
    "ddp_timeout", "ddp_find_unused_parameters", "ddp_backend", "push_to_hub", "hub_model_id", "hub_strategy",
    "hub_token", "hub_private_repo", "resume_from_checkpoint", "gradient_checkpointing_kwargs", "include_for_metrics",
    "group_by_length", "length_column_name", "tf32", "bf16_full_eval", "fp16_full_eval", "full_determinism",
    "use_cpu", "optim_args", "average_tokens_across_devices", "torch_empty_cache_steps", "restore_callback_states_from_checkpoint",
    "auto_find_batch_size", "skip_memory_metrics", "label_smoothing_factor", "neftune_noise_alpha", "project",
    "trackio_space_id", "accelerator_config", "batch_eval_metrics", "eval_on_start", "use_liger_kernel_config",
})
TRAINING_UNMODELLED = {
    "torch_compile": "torch.compile's fused kernels are not modelled (the plan is of eager kernels)",
    "use_liger_kernel": "Liger kernels are not modelled (their fused cross-entropy keeps no logits: "
                        "activations/logits is an upper bound)",
    "gradient_checkpointing_offload": "activation offload is not modelled",
}


def peft_targets(model_type: str, source: str, key: str) -> str:
    """peft's default target modules for ``model_type``, or a RecipeError naming ``key``."""
    if model_type in PEFT_DEFAULT_TARGETS:
        return PEFT_DEFAULT_TARGETS[model_type]
    raise RecipeError(f"{source}: {key} is not set and peft has no default target modules for model_type "
                      f"{model_type!r}: set {key} (or pass --target-modules)")


def training_arguments(d: Draft, keys: Keys, base: Path, src: str, gc_default: bool, bf16_default) -> None:
    """The TrainingArguments keys that change memory: batch, checkpointing, precision,
    optimizer, FSDP / DeepSpeed. ``bf16_default`` None means "True unless fp16" (TRL)."""
    batch = keys.get("per_device_train_batch_size", int)
    d.set("batch_size", batch or 8, None if batch else f"{SRC}: per_device_train_batch_size 8")
    gc = keys.get("gradient_checkpointing", bool)
    if gc is None:  # transformers 5's new name for it
        gc = keys.get("activation_checkpointing", bool)
    d.set("gradient_checkpointing", gc_default if gc is None else gc, None if gc is not None else
          f"{src}: gradient_checkpointing {'true' if gc_default else 'false'}")
    fp16 = keys.get("fp16", bool, False)
    bf16 = keys.get("bf16", bool)
    if bf16 is None:
        bf16 = (not fp16) if bf16_default is None else bf16_default
        if bf16:
            d.defaulted.append(f"bf16=on ({src}: bf16 true unless fp16)")
    d.set("dtype", "fp16" if fp16 else "bf16" if bf16 else "fp32")
    opt = keys.get("optim", str)
    if opt is None:
        d.set("optim", "adamw_torch_fused", f"{SRC}: optim adamw_torch_fused")
    else:
        optimizer(d, "optim", opt)
    fs = keys.get("fsdp", (str, list, bool))
    fs_config = keys.get("fsdp_config", (dict, str))  # a str: a JSON file of FSDP options
    if fs:
        sharding.fsdp(d, "fsdp", fs, fs_config if isinstance(fs_config, dict) else None)
    ds = keys.get("deepspeed", (str, dict))
    if ds:
        sharding.deepspeed_reference(d, "deepspeed", ds, base)
    for key in keys.present(TRAINING_UNMODELLED):
        d.unmodelled(key, TRAINING_UNMODELLED[key])
    keys.used.update(k for k in TRAINING_UNMODELLED if k in keys.data)


def detect(data: dict) -> bool:
    return "model_name_or_path" not in data and any(
        k in data for k in ("per_device_train_batch_size", "output_dir", "gradient_checkpointing", "optim"))


def read(data: dict, path: Path) -> Recipe:
    keys = Keys(data, path.name)
    d = Draft(NAME, keys)
    training_arguments(d, keys, path.parent, SRC, gc_default=False, bf16_default=False)
    adapter = path.parent / "adapter_config.json"
    if adapter.is_file():
        _adapter_config(d, adapter)
    else:
        d.settings["methods"] = ("full",)
        d.note("no adapter_config.json beside it: planned as full fine-tuning")
    d.note("the model's dtype and 4-bit loading are in the training script, not these files: planned loaded in "
           f"the compute dtype ({d.settings['dtype']}); --method qlora plans a 4-bit load, --precision mixed an fp32 one")
    return d.finish(TRAINING_NO_MEMORY)


def _adapter_config(d: Draft, path: Path) -> None:
    """peft's adapter_config.json (LoraConfig.save_pretrained) beside the TrainingArguments."""
    keys = Keys(read_json_object(path, path.name), path.name)
    peft_type = keys.get("peft_type", str, "LORA")
    if peft_type.upper() != "LORA":
        raise RecipeError(f"{path.name}: peft_type {peft_type!r} is not planned (LORA)")
    d.model = d.model or keys.get("base_model_name_or_path", str)
    d.revision = d.revision or keys.get("revision", str)
    rank = keys.get("r", int)
    d.set("rank", rank or 8, None if rank else f"{PEFT_SRC}: r 8")
    alpha = keys.get("lora_alpha", (int, float))
    d.set("alpha", float(alpha if alpha is not None else 8), None if alpha is not None else f"{PEFT_SRC}: lora_alpha 8")
    dropout = keys.get("lora_dropout", float)
    d.set("lora_dropout", dropout or 0.0, None if dropout is not None else f"{PEFT_SRC}: lora_dropout 0.0")
    target = keys.get("target_modules", (list, str))
    if target:
        targets(d, f"{path.name}: target_modules", target)
    else:
        d.set("target_modules", PEFT_DEFAULT)
        d.defaulted.append(f"target_modules=peft's default for the model type ({PEFT_SRC}: target_modules None)")
    params = keys.get("target_parameters", list)
    if params:
        d.set("target_parameters", ",".join(params))
    saved = keys.get("modules_to_save", list)
    if saved:
        d.modules_to_save(f"{path.name}: modules_to_save", saved)
    dora, rslora = keys.get("use_dora", bool, False), keys.get("use_rslora", bool, False)
    d.settings["methods"] = ("dora" if dora else "rslora" if rslora else "lora",)
