"""`--recipe`: axolotl, LLaMA-Factory, TRL, TrainingArguments + adapter_config, accelerate and
DeepSpeed files (tests/data/recipes/, each following a published example) read into planner
settings, with each framework's defaults, the keys not modelled and the keys ignored named."""
import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cli.command import main as plan_main
from planner.recipes import RecipeError, load, read

RECIPES = Path(__file__).resolve().parents[1] / "data" / "recipes"


def plan(*args):
    return CliRunner().invoke(plan_main, list(args))


@pytest.mark.parametrize("name,model,settings", [
    ("axolotl-llama3-qlora.yml", "meta-llama/Llama-3.1-8B", {
        "methods": ("qlora",), "rank": 32, "alpha": 16.0, "lora_dropout": 0.05, "target_modules": "all-linear",
        "quant_type": "nf4", "double_quant": True, "seq_len": 4096, "batch_size": 2, "gradient_checkpointing": True,
        "optim": "paged_adamw_32bit", "dtype": "auto", "attn_implementation": "flash_attention_2"}),
    ("axolotl-llama3-lora-1b.yml", "meta-llama/Llama-3.2-1B", {
        "methods": ("lora",), "rank": 16, "alpha": 32.0, "lora_dropout": 0.05,
        "target_modules": "gate_proj,down_proj,up_proj,q_proj,v_proj,k_proj,o_proj", "seq_len": 2048, "batch_size": 2,
        "gradient_checkpointing": True, "optim": "adamw_8bit", "dtype": "auto", "attn_implementation": "flash_attention_2"}),
    ("axolotl-qlora-fsdp-70b.yaml", "meta-llama/Llama-3.1-70B", {
        "methods": ("qlora",), "rank": 8, "alpha": 16.0, "lora_dropout": 0.05, "target_modules": "all-linear",
        "quant_type": "nf4", "double_quant": True, "seq_len": 512, "batch_size": 1, "gradient_checkpointing": True,
        "optim": "adamw_torch_fused", "dtype": "auto", "attn_implementation": "flash_attention_2", "sharding": "fsdp",
        "offload": "params"}),
    ("llamafactory-llama3-lora-sft.yaml", "meta-llama/Llama-3.1-8B", {
        "methods": ("lora",), "rank": 8, "alpha": 16.0, "lora_dropout": 0.0, "target_modules": "all-linear",
        "seq_len": 2048, "batch_size": 1, "gradient_checkpointing": True, "optim": "adamw_torch_fused", "dtype": "bf16"}),
    ("llamafactory-qwen3-lora-sft-ds3.yaml", "Qwen/Qwen3-4B", {
        "methods": ("lora",), "rank": 8, "alpha": 16.0, "lora_dropout": 0.0, "target_modules": "all-linear",
        "seq_len": 2048, "batch_size": 1, "gradient_checkpointing": True, "optim": "adamw_torch_fused", "dtype": "bf16",
        "sharding": "zero3", "offload": "params"}),
    ("trl-sft.yaml", "Qwen/Qwen2.5-0.5B", {
        "methods": ("full",), "batch_size": 8, "gradient_checkpointing": True, "dtype": "bf16", "precision": "mixed",
        "optim": "adamw_torch_fused", "seq_len": 1024}),
    ("trl-sft-qlora.yaml", "Qwen/Qwen2.5-7B", {
        "methods": ("qlora",), "batch_size": 2, "gradient_checkpointing": True, "dtype": "bf16",
        "optim": "adamw_torch_fused", "attn_implementation": "sdpa", "seq_len": 2048, "rank": 32, "alpha": 16.0,
        "lora_dropout": 0.05, "target_modules": "all-linear", "quant_type": "nf4", "double_quant": False}),
    ("trl-sft-lora.json", "Qwen/Qwen2.5-0.5B", {
        "methods": ("lora",), "batch_size": 4, "gradient_checkpointing": True, "dtype": "bf16", "precision": "mixed",
        "optim": "adamw_torch_fused", "seq_len": 1024, "rank": 16, "alpha": 32.0, "lora_dropout": 0.05,
        "target_modules": "peft-default"}),
    ("hf-trainer/training_args.json", "Qwen/Qwen2.5-1.5B", {
        "methods": ("dora",), "batch_size": 4, "gradient_checkpointing": True, "dtype": "bf16", "optim": "adamw_torch",
        "rank": 16, "alpha": 32.0, "lora_dropout": 0.05, "target_modules": "q_proj,k_proj,v_proj,o_proj"}),
    ("accelerate-fsdp2.yaml", None, {"num_gpus": 8, "sharding": "fsdp", "offload": "none", "dtype": "bf16"}),
    ("accelerate-zero3.yaml", None, {"num_gpus": 8, "sharding": "zero3", "offload": "none", "dtype": "bf16"}),
    ("ds_z3_offload_config.json", None, {"sharding": "zero3", "offload": "params"}),
])
def test_published_examples_map_to_these_settings(name, model, settings):
    recipe = read(RECIPES / name)
    assert (recipe.model, recipe.settings) == (model, settings)


def test_each_framework_default_is_cited_where_the_file_is_silent():
    notes = read(RECIPES / "trl-sft.yaml").notes
    assert notes[0] == (
        "recipe trl-sft.yaml: TRL's defaults where the file is silent: batch_size=8 (transformers TrainingArguments: "
        "per_device_train_batch_size 8); gradient_checkpointing=on (TRL trl/trainer/base_config.py (SFTConfig): "
        "gradient_checkpointing true); bf16=on (TRL trl/trainer/base_config.py (SFTConfig): bf16 true unless fp16); "
        "optim=adamw_torch_fused (transformers TrainingArguments: optim adamw_torch_fused); dtype=float32 (TRL "
        "trl/trainer/model_config.py: dtype float32); seq_len=1024 (TRL trl/trainer/sft_config.py: max_length 1024)")
    assert notes[1] == "recipe trl-sft.yaml: ignored, no effect on a step's memory: dataset_name, report_to, " \
                       "learning_rate, lr_scheduler_type"


def test_axolotl_defaults_and_unmodelled_keys(tmp_path):
    f = tmp_path / "mini.yml"
    f.write_text("base_model: qwen/Qwen2.5-0.5B\nadapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\n"
                 "sample_packing: false\nplugins:\n  - axolotl.integrations.liger.LigerPlugin\nmystery_key: 3\n")
    recipe = read(f)
    assert recipe.settings == {"methods": ("lora",), "rank": 8, "alpha": 16.0, "lora_dropout": 0.0,
                               "target_modules": "all-linear", "seq_len": 512, "batch_size": 1,
                               "gradient_checkpointing": False, "optim": "adamw_torch_fused", "dtype": "auto"}
    assert recipe.notes == (
        "recipe mini.yml (axolotl): plugins: plugins (Liger kernels, cut cross-entropy, ...) change the loss and "
        "activation memory; not modelled: the plan is of the plain transformers model (an upper bound for those)",
        "recipe mini.yml: axolotl's defaults where the file is silent: lora_dropout=0.0 (axolotl "
        "src/axolotl/utils/schemas/peft.py: lora_dropout 0.0); seq_len=512 (axolotl src/axolotl/utils/schemas/"
        "config.py: sequence_len 512); batch_size=1 (axolotl src/axolotl/utils/schemas/training.py: micro_batch_size "
        "1); gradient_checkpointing=off (axolotl src/axolotl/utils/schemas/config.py: gradient_checkpointing false); "
        "optim=adamw_torch_fused (axolotl src/axolotl/utils/schemas/training.py: optimizer adamw_torch_fused); "
        "dtype=auto (axolotl src/axolotl/utils/schemas/config.py: bf16 auto (bf16 where the GPU has it, else fp16))",
        "recipe mini.yml: ignored, not keys ftmem reads for axolotl: mystery_key")
    f.write_text(f.read_text() + "peft_use_dora: true\n")  # negative control: one key changes the method
    assert read(f).settings["methods"] == ("dora",)


@pytest.mark.parametrize("text,message", [
    ("base_model: m/x\nadapter: lora\nlora_r: sixteen\n", "bad.yml: lora_r must be an integer, got 'sixteen'"),
    ("base_model: m/x\nadapter: lora\nlora_alpha: 16\nlora_target_linear: true\n",
     "bad.yml: adapter lora needs lora_r (axolotl passes it to peft as given: src/axolotl/loaders/adapter.py)"),
    ("base_model: m/x\nadapter: qlora\nlora_r: 8\n", "bad.yml: adapter qlora needs load_in_4bit: true (axolotl "
                                                     "refuses it otherwise)"),
    ("base_model: m/x\nmicro_batch_size: [2]\n", "bad.yml: micro_batch_size must be an integer, got [2]"),
    ("model_name_or_path: m/x\nfinetuning_type: lora\nlora_rank: 8.5\n", "bad.yml: lora_rank must be an integer, "
                                                                          "got 8.5"),
    ("model_name_or_path: m/x\nstage: sft\nflash_attn: fa9\n", "bad.yml: flash_attn must be one of auto, disabled, "
                                                                "sdpa, fa2, fa3, got 'fa9'"),
    ("model_name_or_path: m/x\nuse_peft: yes-please\n", "bad.yml: use_peft must be true or false, got 'yes-please'"),
    ("model_name_or_path: m/x\nuse_peft: true\nlora_target_modules: '.*proj'\n",
     "bad.yml: lora_target_modules: a regular expression ('.*proj') is not read; list the module names "
     "(q_proj,v_proj) or use all-linear"),
    ("base_model: m/x\nadapter: lora\nlora_r: 8\nlora_alpha: 8\nlora_target_linear: true\nlora_modules_to_save: "
     "[score]\n", "bad.yml: lora_modules_to_save: the planner trains embed_tokens and lm_head whole (peft "
                  "modules_to_save), not score"),
    ("key: [unclosed\n", "bad.yml: not YAML (expected ',' or ']', but got '<stream end>', line 2)"),
    ("just a sentence\n", "bad.yml: a recipe must be a YAML or JSON mapping of keys, got str"),
    ("learning_rate: 0.1\n", "bad.yml: not a recipe ftmem reads: expected axolotl (base_model), LLaMA-Factory or TRL "
                             "(model_name_or_path), TrainingArguments JSON (per_device_train_batch_size), an "
                             "accelerate config (distributed_type) or a DeepSpeed JSON (zero_optimization)"),
])
def test_bad_recipes_name_the_key(tmp_path, text, message):
    f = tmp_path / "bad.yml"
    f.write_text(text)
    with pytest.raises(RecipeError) as err:
        read(f)
    assert str(err.value) == message
    result = plan("--recipe", str(f))  # the CLI: one line, exit 2
    assert (result.exit_code, result.stderr, result.stdout) == (2, f"plan: error: {message}\n", "")


def test_not_json(tmp_path):
    f = tmp_path / "args.json"
    f.write_text("{'single': 'quotes'}")
    with pytest.raises(RecipeError, match=r"^args.json: not JSON \(Expecting property name enclosed in double "
                                          r"quotes, line 1\)$"):
        read(f)


def test_flags_override_the_recipe_and_the_plan_is_reproducible_from_its_flags():
    path = str(RECIPES / "axolotl-llama3-qlora.yml")
    result = plan("--recipe", path, "--gpu", "rtx4090", "--json")
    assert result.exit_code == 0, result.stderr
    (planned,) = json.loads(result.stdout)["plans"]
    assert (planned["model"], planned["method"], planned["settings"]["rank"], planned["settings"]["seq_len"]) == (
        "llama-3.1-8b", "qlora", 32, 4096)
    flags_note = next(n for n in planned["notes"] if " as flags: " in n)
    assert flags_note == (
        "recipe axolotl-llama3-qlora.yml as flags: plan --model meta-llama/Llama-3.1-8B --method qlora --rank 32 "
        "--alpha 16 --target-modules all-linear --lora-dropout 0.05 --batch-size 2 --seq-len 4096 --dtype auto "
        "--optim paged_adamw_32bit --quant-type nf4 --attn-implementation flash_attention_2 --gradient-checkpointing "
        "--double-quant")
    again = plan(*shlex.split(flags_note.split(" as flags: plan ")[1]), "--gpu", "rtx4090", "--json")
    (from_flags,) = json.loads(again.stdout)["plans"]
    recipe_notes = [n for n in planned["notes"] if n.startswith("recipe ")]
    assert {**planned, "notes": [n for n in planned["notes"] if n not in recipe_notes]} == from_flags
    override = plan("--recipe", path, "--gpu", "rtx4090", "--rank", "8", "--model", "qwen2.5-7b", "--json")
    (o,) = json.loads(override.stdout)["plans"]
    assert (o["model"], o["settings"]["rank"], o["settings"]["seq_len"]) == ("qwen2.5-7b", 8, 4096)


def test_sharding_needs_the_number_of_gpus():
    path = str(RECIPES / "axolotl-qlora-fsdp-70b.yaml")
    one = json.loads(plan("--recipe", path, "--gpu", "rtx4090", "--json").stdout)["plans"][0]
    assert "num_gpus" not in one["settings"]
    assert ("the recipe shards with fsdp over the GPUs it is launched on: planned on one GPU; add --num-gpus N to "
            "plan one rank of N") in one["notes"]
    two = json.loads(plan("--recipe", path, "--gpu", "rtx4090", "--num-gpus", "2", "--json").stdout)["plans"][0]
    assert {k: two["settings"][k] for k in ("num_gpus", "sharding", "offload")} == {
        "num_gpus": 2, "sharding": "fsdp", "offload": "params"}


def test_an_accelerate_config_beside_a_recipe_gives_the_sharding():
    recipe = load([RECIPES / "llamafactory-llama3-lora-sft.yaml", RECIPES / "accelerate-zero3.yaml"])
    assert {k: recipe.settings[k] for k in ("num_gpus", "sharding", "offload", "rank")} == {
        "num_gpus": 8, "sharding": "zero3", "offload": "none", "rank": 8}
    with pytest.raises(RecipeError, match="^one training recipe at a time: trl-sft.yaml, axolotl-llama3-qlora.yml$"):
        load([RECIPES / "trl-sft.yaml", RECIPES / "axolotl-llama3-qlora.yml"])


def test_peft_default_targets_follow_the_model_type(tmp_path):
    result = plan("--recipe", str(RECIPES / "trl-sft-lora.json"), "--gpu", "l4", "--json")
    assert json.loads(result.stdout)["plans"][0]["settings"]["target_modules"] == ["q_proj", "v_proj"]
    phi = plan("--recipe", str(RECIPES / "trl-sft-lora.json"), "--model", "phi-3-mini", "--json")
    assert phi.exit_code == 2
    assert phi.stderr == ("plan: error: trl-sft-lora.json: lora_target_modules is not set and peft has no default target "
                          "modules for model_type 'phi3': set lora_target_modules (or pass --target-modules)\n")
    ok = plan("--recipe", str(RECIPES / "trl-sft-lora.json"), "--model", "phi-3-mini", "--target-modules",
              "qkv_proj", "--json")  # negative control: a flag fills it
    assert ok.exit_code == 0, ok.stderr


def test_recipe_with_a_hub_model(hub, tmp_path):
    f = tmp_path / "hub.yml"
    f.write_text("base_model: test-org/tiny-llama\nrevision_of_model: v2\nadapter: lora\nlora_r: 4\nlora_alpha: 8\n"
                 "lora_target_linear: true\n")
    result = plan("--recipe", str(f), "--gpu", "t4", "--json")
    assert result.exit_code == 0, result.stderr
    (planned,) = json.loads(result.stdout)["plans"]
    assert (planned["model"], planned["total_params"], planned["method"]) == ("test-org/tiny-llama", 239_040, "lora")
