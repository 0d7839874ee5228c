"""Sharding configs: an accelerate config (``accelerate config`` YAML: FSDP, DeepSpeed or
multi-GPU DDP) or a DeepSpeed JSON, read into --num-gpus, --sharding and --offload; and the
FSDP / DeepSpeed keys that training recipes carry.

Facts used (key names and meanings):
- accelerate src/accelerate/commands/config/config_args.py: ``distributed_type`` (NO,
  MULTI_GPU, FSDP, DEEPSPEED), ``num_processes``, ``fsdp_config`` (``fsdp_offload_params``),
  ``deepspeed_config`` (``zero_stage``, ``offload_optimizer_device``,
  ``offload_param_device``, ``deepspeed_config_file``); TRL examples/accelerate_configs/fsdp2.yaml
  and deepspeed_zero3.yaml follow it.
- DeepSpeed's JSON: ``zero_optimization.stage`` (default 0), ``offload_optimizer.device`` and
  ``offload_param.device`` ("cpu" / "nvme" / "none"); LLaMA-Factory examples/deepspeed/.
- HF TrainingArguments: ``fsdp`` ("full_shard auto_wrap", or a list), ``fsdp_config``
  (``offload_params`` / ``fsdp_offload_params``), ``deepspeed`` (a JSON path or a dict).
"""
from __future__ import annotations

from pathlib import Path

from .keys import Keys, RecipeError, read_json_object
from .recipe import Draft, Recipe

ACCELERATE_NO_MEMORY = frozenset({
    "compute_environment", "debug", "downcast_bf16", "enable_cpu_affinity", "machine_rank", "main_training_function",
    "num_machines", "rdzv_backend", "same_network", "tpu_env", "tpu_use_cluster", "tpu_use_sudo", "use_cpu",
    "main_process_ip", "main_process_port", "gpu_ids", "dynamo_config",
})


def _offloaded(value) -> bool:
    return isinstance(value, str) and value.lower() in ("cpu", "nvme")


def deepspeed(draft: Draft, config: dict, where: str) -> None:
    """A DeepSpeed config's ZeRO stage and offload into the draft's sharding settings."""
    zero = config.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise RecipeError(f"{where}: zero_optimization must be a mapping, got {zero!r}")
    stage = zero.get("stage", 0)  # DeepSpeed's default: ZeRO disabled
    if stage not in (0, 1, 2, 3):
        raise RecipeError(f"{where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if stage in (0, 1):
        draft.set("sharding", "ddp")
        if stage == 1:
            draft.note(f"{where}: ZeRO-1 (optimizer states partitioned) is not modelled: planned as DDP, "
                       "which keeps them whole (an upper bound)")
        return
    draft.set("sharding", f"zero{stage}")
    if stage == 3 and _offloaded((zero.get("offload_param") or {}).get("device")):
        draft.set("offload", "params")
    elif _offloaded((zero.get("offload_optimizer") or {}).get("device")):
        draft.set("offload", "optimizer")
    else:
        draft.set("offload", "none")
    if stage == 3 and _offloaded((zero.get("offload_param") or {}).get("device")) and not _offloaded(
            (zero.get("offload_optimizer") or {}).get("device")):
        draft.note(f"{where}: offload_param without offload_optimizer is planned as --offload params")


def deepspeed_reference(draft: Draft, key: str, value, base: Path) -> None:
    """A recipe's ``deepspeed`` key: a dict, or a JSON path (beside the recipe, else from the
    current folder, as the frameworks resolve it)."""
    if isinstance(value, dict):
        return deepspeed(draft, value, f"{draft.keys.source}: {key}")
    candidates = [base / value, Path(value)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        draft.unmodelled(key, f"{value} not found (beside the recipe or here): its ZeRO stage is unknown; "
                              "pass --sharding zero2|zero3 and --num-gpus")
        return
    deepspeed(draft, read_json_object(path, f"{draft.keys.source}: {key}: {path.name}"), f"{path.name}")


def fsdp(draft: Draft, key: str, value, config: dict | None) -> None:
    """HF TrainingArguments' / axolotl's ``fsdp`` ("full_shard auto_wrap" or a list) and
    ``fsdp_config`` (``offload_params`` / ``fsdp_offload_params``)."""
    if isinstance(value, bool):
        options = ["full_shard"] if value else []
    else:
        options = value.split() if isinstance(value, str) else list(value or [])
    if not options and not config:
        return
    if "offload" in options or any(bool((config or {}).get(k)) for k in ("offload_params", "fsdp_offload_params")):
        draft.set("offload", "params")
    else:
        draft.set("offload", "none")
    draft.set("sharding", "fsdp")
    if (config or {}).get("fsdp_activation_checkpointing") or (config or {}).get("activation_checkpointing"):
        draft.set("gradient_checkpointing", True)
    if any(o in options for o in ("shard_grad_op", "hybrid_shard", "hybrid_shard_zero2")) or str(
            (config or {}).get("fsdp_sharding_strategy", "FULL_SHARD")).upper() not in ("FULL_SHARD", "1"):
        draft.note(f"{key}: a sharding strategy other than full_shard is planned as FSDP's full shard")


def is_deepspeed(data: dict) -> bool:
    return "zero_optimization" in data


def is_accelerate(data: dict) -> bool:
    return "distributed_type" in data


def read_deepspeed(data: dict, path: Path) -> Recipe:
    keys = Keys(data, path.name)
    draft = Draft("DeepSpeed", keys)
    deepspeed(draft, data, path.name)
    keys.used.update(data)  # a DeepSpeed JSON: only its ZeRO stage and offload change what is planned
    return draft.finish(frozenset())


def read_accelerate(data: dict, path: Path) -> Recipe:
    """An ``accelerate config`` YAML: the number of processes and the sharding."""
    keys = Keys(data, path.name)
    draft = Draft("accelerate", keys)
    kind = keys.choice("distributed_type", ("no", "multi_gpu", "fsdp", "deepspeed", "multi_cpu", "xla",
                                            "multi_xpu", "multi_npu", "multi_mlu", "multi_musa", "multi_hpu"))
    processes = keys.get("num_processes", int, 1)
    if processes < 1:
        raise RecipeError(f"{path.name}: num_processes must be at least 1, got {processes}")
    draft.set("num_gpus", processes)
    if kind == "fsdp":
        config = keys.get("fsdp_config", dict, {})
        fsdp(draft, "fsdp_config", ["full_shard"], config)
    elif kind == "deepspeed":
        ds = keys.get("deepspeed_config", dict, {})
        if ds.get("deepspeed_config_file"):
            deepspeed_reference(draft, "deepspeed_config.deepspeed_config_file", ds["deepspeed_config_file"], path.parent)
        else:
            deepspeed(draft, {"zero_optimization": {
                "stage": ds.get("zero_stage", 2),  # accelerate config's default zero_stage is 2
                "offload_optimizer": {"device": ds.get("offload_optimizer_device", "none")},
                "offload_param": {"device": ds.get("offload_param_device", "none")}}}, path.name)
    elif kind == "multi_gpu" and processes > 1:
        draft.set("sharding", "ddp")
    keys.get("mixed_precision", str)
    mp = data.get("mixed_precision")
    if mp in ("bf16", "fp16"):
        draft.set("dtype", mp)
    elif mp == "fp8":
        draft.unmodelled("mixed_precision", "fp8 training is not modelled: planned in bf16")
        draft.set("dtype", "bf16")
    return draft.finish(ACCELERATE_NO_MEMORY)
