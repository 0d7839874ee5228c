"""TRL's SFT config, YAML or JSON (``trl sft --config config.yaml``): ModelConfig keys (the
model, its dtype, LoRA, 4-bit) and SFTConfig keys (TrainingArguments plus max_length, packing).

Defaults, from TRL trl/trainer/model_config.py (ModelConfig): ``model_revision`` "main",
``dtype`` "float32" (the model is loaded in fp32: with bf16 autocast that is fp32 master
weights, ``--precision mixed``), ``attn_implementation`` None, ``use_peft`` False, ``lora_r``
16, ``lora_alpha`` 32, ``lora_dropout`` 0.05, ``lora_target_modules`` None (peft's per-model
default), ``use_rslora`` / ``use_dora`` False, ``load_in_4bit`` / ``load_in_8bit`` False,
``bnb_4bit_quant_type`` "nf4", ``use_bnb_nested_quant`` False. From trl/trainer/sft_config.py
and base_config.py (SFTConfig): ``max_length`` 1024, ``packing`` False, ``padding_free`` False,
``gradient_checkpointing`` True, ``bf16`` True unless ``fp16``; the other TrainingArguments
defaults are transformers' (planner.recipes.hf_trainer).
"""
from __future__ import annotations

from pathlib import Path

from .hf_trainer import TRAINING_NO_MEMORY, training_arguments
from .keys import Keys, RecipeError
from .recipe import PEFT_DEFAULT, Draft, Recipe, attention, targets

NAME = "TRL"
SRC = "TRL trl/trainer/model_config.py"
SFT_SRC = "TRL trl/trainer/sft_config.py"
BASE_SRC = "TRL trl/trainer/base_config.py"

NO_MEMORY = TRAINING_NO_MEMORY | frozenset({
    "dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_text_field",
    "dataset_kwargs", "dataset_num_proc", "dataset_streaming", "trust_remote_code", "env", "model_init_kwargs",
    "chat_template_path", "eos_token", "pad_token", "completion_only_loss", "assistant_only_loss", "loss_type",
    "shuffle_dataset", "eval_packing", "lora_task_type", "model_parameter_count", "lora_target_parameters_only",
    "use_bnb_nested_quant", "bnb_4bit_quant_type", "packing_strategy", "dataset_mixture", "datasets",
})
UNMODELLED = {
    "packing": "packed sequences are planned as per_device_train_batch_size x max_length tokens (the same count)",
    "padding_free": "padding-free batches hold fewer tokens than batch x max_length: the plan is an upper bound",
    "load_in_8bit": "8-bit base weights (bitsandbytes LLM.int8) are not modelled: planned with 16-bit base weights",
    "activation_offloading": "activations offloaded to the host are not modelled: planned kept on the GPU "
                             "(an upper bound)",
}


def detect(data: dict) -> bool:
    return "model_name_or_path" in data


def read(data: dict, path: Path) -> Recipe:
    keys = Keys(data, path.name)
    d = Draft(NAME, keys)
    d.model = keys.get("model_name_or_path", str)
    d.revision = keys.get("model_revision", str)
    training_arguments(d, keys, path.parent, f"{BASE_SRC} (SFTConfig)", gc_default=True, bf16_default=None)
    dtype = keys.choice("dtype", ("auto", "bfloat16", "float16", "float32")) or keys.choice(
        "torch_dtype", ("auto", "bfloat16", "float16", "float32"))
    if dtype is None:
        d.defaulted.append(f"dtype=float32 ({SRC}: dtype float32)")
    if (dtype or "float32") == "float32" and d.settings["dtype"] in ("bf16", "fp16"):
        d.set("precision", "mixed")  # fp32 weights, 16-bit autocast
    elif dtype in ("bfloat16", "float16"):
        d.set("dtype", "bf16" if dtype == "bfloat16" else "fp16")
    attention(d, "attn_implementation", keys.get("attn_implementation", str))
    seq = keys.get("max_length", int) or keys.get("max_seq_length", int)
    d.set("seq_len", seq or 1024, None if seq else f"{SFT_SRC}: max_length 1024")
    four = keys.get("load_in_4bit", bool, False)
    if not keys.get("use_peft", bool, False):
        if four:
            raise RecipeError(f"{path.name}: load_in_4bit needs use_peft: true (4-bit weights do not train whole)")
        d.settings["methods"] = ("full",)
    else:
        dora, rslora = keys.get("use_dora", bool, False), keys.get("use_rslora", bool, False)
        d.settings["methods"] = (("qdora" if dora else "qlora") if four else
                                 ("dora" if dora else "rslora" if rslora else "lora"),)
        rank = keys.get("lora_r", int)
        d.set("rank", rank or 16, None if rank else f"{SRC}: lora_r 16")
        alpha = keys.get("lora_alpha", (int, float))
        d.set("alpha", float(alpha if alpha is not None else 32), None if alpha is not None else f"{SRC}: lora_alpha 32")
        dropout = keys.get("lora_dropout", float)
        d.set("lora_dropout", 0.05 if dropout is None else dropout, None if dropout is not None else
              f"{SRC}: lora_dropout 0.05")
        target = keys.get("lora_target_modules", (list, str))
        if target:
            targets(d, "lora_target_modules", target)
        else:
            d.set("target_modules", PEFT_DEFAULT)
            d.defaulted.append(f"target_modules=peft's default for the model type ({SRC}: lora_target_modules None)")
        params = keys.get("lora_target_parameters", list)
        if params:
            d.set("target_parameters", ",".join(params))
        saved = keys.get("lora_modules_to_save", list)
        if saved:
            d.modules_to_save("lora_modules_to_save", saved)
        if four:
            d.set("quant_type", keys.choice("bnb_4bit_quant_type", ("nf4", "fp4"), "nf4"))
            d.set("double_quant", keys.get("use_bnb_nested_quant", bool, False),
                  None if keys.given("use_bnb_nested_quant") else f"{SRC}: use_bnb_nested_quant false")
    for key in keys.present(UNMODELLED):
        d.unmodelled(key, UNMODELLED[key])
    keys.used.update(k for k in UNMODELLED if k in data)
    return d.finish(NO_MEMORY)
