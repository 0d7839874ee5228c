"""The TrainingArguments + adapter_config.json mapping (planner.recipes.hf_trainer) against
the frameworks' own parsers, installed with the torch stack: transformers' HfArgumentParser /
TrainingArguments and peft's LoraConfig read the same files."""
from pathlib import Path

from planner.recipes import read

HF_DIR = Path(__file__).resolve().parents[1] / "data" / "recipes" / "hf-trainer"


def test_training_arguments_and_lora_config_read_the_same_values(torch_stack, tmp_path):
    from peft import LoraConfig
    from transformers import HfArgumentParser, TrainingArguments

    import json

    values = json.loads((HF_DIR / "training_args.json").read_text())
    # use_cpu: bf16=True is refused on a machine without a bf16 GPU otherwise (no memory effect)
    (args,) = HfArgumentParser(TrainingArguments).parse_dict({**values, "use_cpu": True})
    lora = LoraConfig.from_pretrained(str(HF_DIR))
    settings = read(HF_DIR / "training_args.json").settings
    assert settings["batch_size"] == args.per_device_train_batch_size == 4
    assert settings["gradient_checkpointing"] is bool(args.gradient_checkpointing) is True
    assert settings["dtype"] == ("bf16" if args.bf16 else "fp16" if args.fp16 else "fp32") == "bf16"
    assert settings["optim"] == str(getattr(args.optim, "value", args.optim)) == "adamw_torch"
    assert (settings["rank"], settings["alpha"], settings["lora_dropout"]) == (lora.r, lora.lora_alpha,
                                                                               lora.lora_dropout) == (16, 32, 0.05)
    assert set(settings["target_modules"].split(",")) == set(lora.target_modules)
    assert settings["methods"] == (("dora",) if lora.use_dora else ("lora",)) == ("dora",)


def test_defaults_match_transformers_and_peft(torch_stack, tmp_path):
    """Where the files are silent, the defaults the planner cites are the installed ones."""
    import json

    from peft import LoraConfig
    from transformers import HfArgumentParser, TrainingArguments

    (tmp_path / "training_args.json").write_text(json.dumps({"output_dir": "out"}))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q_proj"]}))
    (args,) = HfArgumentParser(TrainingArguments).parse_json_file(str(tmp_path / "training_args.json"))
    lora = LoraConfig(target_modules=["q_proj"])
    settings = read(tmp_path / "training_args.json").settings
    assert settings["batch_size"] == args.per_device_train_batch_size == 8
    assert settings["gradient_checkpointing"] is bool(args.gradient_checkpointing) is False
    assert settings["optim"] == str(getattr(args.optim, "value", args.optim)) == "adamw_torch_fused"
    assert settings["dtype"] == "fp32" and not args.bf16 and not args.fp16
    assert (settings["rank"], settings["alpha"], settings["lora_dropout"]) == (lora.r, lora.lora_alpha,
                                                                               lora.lora_dropout) == (8, 8, 0.0)
