"""axolotl's YAML config (``axolotl train config.yml``).

Key names and defaults, from axolotl src/axolotl/utils/schemas/ (the pydantic config):
- peft.py: ``adapter`` (None: full fine-tuning; lora, qlora), ``load_in_4bit`` / ``load_in_8bit``
  (False), ``lora_r`` / ``lora_alpha`` (None: required with an adapter; axolotl passes them to
  peft as given, src/axolotl/loaders/adapter.py), ``lora_dropout`` (0.0),
  ``lora_target_modules`` / ``lora_target_linear``, ``lora_target_parameters``,
  ``lora_modules_to_save``, ``peft_use_dora``, ``peft_use_rslora``;
- config.py: ``sequence_len`` (512), ``gradient_checkpointing`` (False; "offload" too),
  ``bf16`` ("auto": bf16 where the GPU has it, else fp16), ``fp16``, ``attn_implementation``
  (None: transformers' default) and the deprecated ``flash_attention`` / ``sdp_attention`` /
  ``eager_attention`` flags, ``sample_packing``, ``fsdp`` / ``fsdp_config``, ``deepspeed``;
- training.py: ``micro_batch_size`` (1), ``optimizer`` ("adamw_torch_fused");
- deprecated.py: ``revision_of_model``.
QLoRA: src/axolotl/loaders/model.py loads 4-bit NF4 with double quantization.
"""
from __future__ import annotations

from pathlib import Path

from . import sharding
from .keys import Keys, RecipeError
from .recipe import Draft, Recipe, attention, optimizer, targets

NAME = "axolotl"
SRC = "axolotl src/axolotl/utils/schemas"

NO_MEMORY = frozenset({
    "base_model_config", "model_type", "tokenizer_type", "tokenizer_config", "tokenizer_use_fast", "hub_model_id",
    "datasets", "test_datasets", "dataset_prepared_path", "val_set_size", "output_dir", "lora_model_dir",
    "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_log_model", "mlflow_tracking_uri",
    "gradient_accumulation_steps", "num_epochs", "max_steps", "lr_scheduler", "learning_rate", "warmup_ratio",
    "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_epsilon", "logging_steps",
    "evals_per_epoch", "eval_steps", "saves_per_epoch", "save_steps", "save_total_limit", "resume_from_checkpoint",
    "special_tokens", "tokens", "chat_template", "train_on_inputs", "group_by_length", "seed", "strict", "tf32",
    "early_stopping_patience", "local_rank", "debug", "save_safetensors", "loss_watchdog_threshold",
    "loss_watchdog_patience", "gradient_checkpointing_kwargs", "trust_remote_code", "save_first_step",
    "eval_sample_packing", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
    "lr_scheduler_kwargs", "cosine_min_lr_ratio", "hub_strategy", "push_dataset_to_hub", "shuffle_merged_datasets",
    "dataset_processes", "default_system_message", "lora_fan_in_fan_out", "peft_init_lora_weights", "bfloat16",
    "float16", "excess_length_strategy", "eval_sequence_len", "min_sample_len", "is_llama_derived_model",
    "is_mistral_derived_model", "is_qwen_derived_model", "use_wandb", "use_tensorboard", "pad_to_sequence_len",
    "sample_packing_group_size", "sample_packing_bin_size", "lora_on_cpu", "peft_ensure_weight_tying",
})
UNMODELLED = {
    "sample_packing": "packed sequences are planned as micro_batch_size x sequence_len tokens (the same count); "
                      "the attention of packed rows is not modelled apart",
    "plugins": "plugins (Liger kernels, cut cross-entropy, ...) change the loss and activation memory; "
               "not modelled: the plan is of the plain transformers model (an upper bound for those)",
    "liger_rms_norm": "Liger kernels are not modelled (the plan keeps transformers' modules)",
    "liger_glu_activation": "Liger kernels are not modelled (the plan keeps transformers' modules)",
    "liger_fused_linear_cross_entropy": "the fused linear cross-entropy keeps no logits; not modelled "
                                        "(activations/logits is an upper bound)",
    "liger_rope": "Liger kernels are not modelled", "liger_layer_norm": "Liger kernels are not modelled",
    "unsloth_lora_mlp": "Unsloth's kernels are not modelled", "unsloth_lora_qkv": "Unsloth's kernels are not modelled",
    "unsloth_lora_o": "Unsloth's kernels are not modelled",
    "unsloth_cross_entropy_loss": "Unsloth's kernels are not modelled",
    "lora_mlp_kernel": "axolotl's LoRA kernels are not modelled", "lora_qkv_kernel": "axolotl's LoRA kernels are not modelled",
    "lora_o_kernel": "axolotl's LoRA kernels are not modelled",
    "torch_compile": "torch.compile's fused kernels are not modelled (the plan is of eager kernels)",
    "fp8": "FP8 training is not modelled: planned in bf16",
    "rl": "an RL / preference trainer (DPO, KTO, GRPO, ...) holds a reference model and several sequences per "
          "example; the plan is of one SFT step",
    "lora_rank_pattern": "per-module ranks are not modelled: planned with lora_r everywhere",
    "lora_alpha_pattern": "per-module alphas do not change memory",
    "peft_layers_to_transform": "adapters on some layers only are not modelled: planned on every layer",
    "context_parallel_size": "context parallelism is not modelled", "sequence_parallel_degree": "sequence "
                                                                                                 "parallelism is not modelled",
    "tensor_parallel_size": "tensor parallelism is not modelled",
    "eval_batch_size": "evaluation is not planned (a forward without gradients: less than a training step)",
    "flash_attn_cross_entropy": "flash-attention's cross-entropy is not modelled",
    "gradient_checkpointing_offload": "activation offload is not modelled",
}


def detect(data: dict) -> bool:
    return "base_model" in data


def read(data: dict, path: Path) -> Recipe:
    keys = Keys(data, path.name)
    d = Draft(NAME, keys)
    d.model = keys.get("base_model", str)
    d.revision = keys.get("revision_of_model", str)
    adapter = keys.get("adapter", str)
    four, eight = keys.get("load_in_4bit", bool, False), keys.get("load_in_8bit", bool, False)
    dora, rslora = keys.get("peft_use_dora", bool, False), keys.get("peft_use_rslora", bool, False)
    if adapter is None:
        method = "full"
    elif adapter in ("lora", "qlora"):
        if adapter == "qlora" and not four:
            raise RecipeError(f"{path.name}: adapter qlora needs load_in_4bit: true (axolotl refuses it otherwise)")
        method = ("qdora" if dora else "qlora") if adapter == "qlora" or four else ("dora" if dora else
                                                                                   "rslora" if rslora else "lora")
        if rslora and dora:
            d.note("peft_use_rslora with DoRA: planned as DoRA (rsLoRA's scaling does not change memory)")
        if eight and adapter == "lora":
            d.unmodelled("load_in_8bit", "8-bit base weights (bitsandbytes LLM.int8) are not modelled: planned "
                                         "with 16-bit base weights (an upper bound on weights/base)")
        r = keys.get("lora_r", int)
        alpha = keys.get("lora_alpha", (int, float))
        for key, value in (("lora_r", r), ("lora_alpha", alpha)):
            if value is None:
                raise RecipeError(f"{path.name}: adapter {adapter} needs {key} (axolotl passes it to peft as given: "
                                  "src/axolotl/loaders/adapter.py)")
        d.set("rank", r)
        d.set("alpha", float(alpha))
        dropout = keys.get("lora_dropout", float)
        d.set("lora_dropout", 0.0 if dropout is None else dropout, None if dropout is not None else
              f"{SRC}/peft.py: lora_dropout 0.0")
        linear = keys.get("lora_target_linear", bool, False)
        modules = keys.get("lora_target_modules", (list, str))
        if linear:
            d.set("target_modules", "all-linear")
        elif modules:
            targets(d, "lora_target_modules", modules)
        else:
            raise RecipeError(f"{path.name}: adapter {adapter} needs lora_target_modules or lora_target_linear: true")
        params = keys.get("lora_target_parameters", (list, str))
        if params:
            d.set("target_parameters", ",".join(params) if isinstance(params, list) else params)
        saved = keys.get("lora_modules_to_save", list)
        if saved:
            d.modules_to_save("lora_modules_to_save", saved)
        if four:
            d.set("quant_type", "nf4")  # src/axolotl/loaders/model.py: bnb_4bit_quant_type nf4, double quant
            d.set("double_quant", True)
    else:
        raise RecipeError(f"{path.name}: adapter {adapter!r} is not planned (lora, qlora, or none for full "
                          "fine-tuning)")
    d.settings["methods"] = (method,)
    seq = keys.get("sequence_len", int)
    d.set("seq_len", seq or 512, None if seq else f"{SRC}/config.py: sequence_len 512")
    batch = keys.get("micro_batch_size", int)
    d.set("batch_size", batch or 1, None if batch else f"{SRC}/training.py: micro_batch_size 1")
    gc = keys.get("gradient_checkpointing", (bool, str), False)
    if isinstance(gc, str):
        if gc not in ("offload", "offload_disk"):
            raise RecipeError(f"{path.name}: gradient_checkpointing must be true, false, offload or offload_disk, "
                              f"got {gc!r}")
        d.unmodelled("gradient_checkpointing", f"{gc}: checkpoints offloaded to the host are not modelled: planned "
                                               "kept on the GPU (an upper bound)")
    d.set("gradient_checkpointing", bool(gc), None if keys.given("gradient_checkpointing") else
          f"{SRC}/config.py: gradient_checkpointing false")
    opt = keys.get("optimizer", str)
    if opt is None:
        d.set("optim", "adamw_torch_fused", f"{SRC}/training.py: optimizer adamw_torch_fused")
    else:
        optimizer(d, "optimizer", opt)
    _precision(d, keys)
    _attention(d, keys)
    fs, fs_config = keys.get("fsdp", (list, str, bool)), keys.get("fsdp_config", dict)
    if fs or fs_config:
        sharding.fsdp(d, "fsdp", fs, fs_config)
    ds = keys.get("deepspeed", (str, dict))
    if ds:
        sharding.deepspeed_reference(d, "deepspeed", ds, path.parent)
    for key in keys.present(UNMODELLED):
        d.unmodelled(key, UNMODELLED[key])
    keys.used.update(k for k in UNMODELLED if k in data)  # set to false or null: nothing to say
    return d.finish(NO_MEMORY)


def _precision(d: Draft, keys: Keys) -> None:
    bf16 = keys.get("bf16", (bool, str))
    fp16 = keys.get("fp16", bool)
    fp32 = keys.get("float32", bool)
    if isinstance(bf16, str) and bf16 not in ("auto", "full"):
        raise RecipeError(f"{keys.source}: bf16 must be true, false, auto or full, got {bf16!r}")
    if fp16:
        d.set("dtype", "fp16")
    elif bf16 is True or bf16 == "full":
        d.set("dtype", "bf16")
    elif bf16 is None or bf16 == "auto":
        d.set("dtype", "auto", None if bf16 else f"{SRC}/config.py: bf16 auto (bf16 where the GPU has it, "
                                                 "else fp16)")
    elif fp32 or bf16 is False:
        d.set("dtype", "fp32")


def _attention(d: Draft, keys: Keys) -> None:
    name = keys.get("attn_implementation", str)
    if name is None:
        for key, value in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"),
                           ("eager_attention", "eager")):
            if keys.get(key, bool, False):
                name = value
                break
    if name in ("xformers", "flex_attention", "sage", "fp8") or (name and "/" in name):
        d.unmodelled("attn_implementation", f"attention {name!r} is not modelled: planned with transformers' "
                                            "default (auto)")
        return
    attention(d, "attn_implementation", name)
    keys.get("xformers_attention", bool)
    if keys.get("xformers_attention", bool, False):
        d.unmodelled("xformers_attention", "xformers attention is not modelled: planned with transformers' default")
