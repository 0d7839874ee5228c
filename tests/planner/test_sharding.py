"""Several GPUs in the planner: one-GPU plans unchanged, the sharded terms, bad input, and
DeepSpeed ZeRO's model states against DeepSpeed's own estimator formulas. (The DDP / FSDP
terms against the tracer: tests/probes/test_parallel.py.)"""
import pytest

from planner import TrainSpec, get_model, plan
from planner.model import counts
from planner.memory import sharding as S
from planner.memory.moments import COMPONENT_KEYS, PARALLEL_KEYS, step_memory


def _states(model, train) -> int:
    """Model states of a ZeRO plan at its optimizer step: parameters, gradients, master weights
    and moments, and the fp32 gradient partition (the optimizer transient)."""
    c = step_memory(model, train, "bf16").phases["optimizer"]
    return (c["weights/base"] + c["adapters/params"] + c["grads"] + c["optimizer/states"]
            + c["optimizer/transient"])


def test_one_gpu_plan_unchanged():
    model = get_model("7b")
    for method in ("full", "lora", "qlora"):
        default = plan(model, "rtx4090", TrainSpec(method=method), {})
        explicit = plan(model, "rtx4090", TrainSpec(method=method, num_gpus=1, sharding="none"), {})
        assert default.to_dict() == explicit.to_dict()
        assert set(default.components) >= set(COMPONENT_KEYS)
        assert not set(default.components) & set(PARALLEL_KEYS)
        assert "num_gpus" not in default.settings


def test_parallel_plan_has_every_parallel_key():
    p = plan("8b", "rtx4090", TrainSpec(num_gpus=2, sharding="fsdp"), {})
    assert set(PARALLEL_KEYS) <= set(p.components)
    assert p.settings["num_gpus"] == 2 and p.settings["sharding"] == "fsdp"
    assert all(isinstance(v, int) and v >= 0 for v in p.components.values())


def test_shard_is_torch_chunk_on_dim0():
    assert S.shard(16, 16 * 128, 2) == 8 * 128
    assert S.shard(10, 10 * 3, 4) == 3 * 3  # ceil(10 / 4) rows on rank 0
    assert S.shard(10, 10 * 3, 1) == 30


@pytest.mark.parametrize("n", [2, 4, 8])
def test_fsdp_divides_model_state_ddp_keeps_it(n):
    model = get_model("8b")
    one = step_memory(model, TrainSpec(method="full"), "bf16").phases["optimizer"]
    fsdp = step_memory(model, TrainSpec(method="full", num_gpus=n, sharding="fsdp"), "bf16").phases["optimizer"]
    ddp = step_memory(model, TrainSpec(method="full", num_gpus=n, sharding="ddp"), "bf16").phases["optimizer"]
    for key in ("weights/base", "grads", "optimizer/states"):
        assert fsdp[key] == -(-one[key] // n)  # Llama-3.1-8B's dims divide by 8
        assert ddp[key] == one[key]
    assert ddp["parallel/grad_buckets"] == one["grads"]
    assert fsdp["parallel/grad_buckets"] == 0


def test_more_gpus_less_memory_per_gpu():
    peaks = [plan("8b", "h100", TrainSpec(method="full", num_gpus=n, sharding=s), {}).peak_allocated_bytes
             for s, n in (("fsdp", 2), ("fsdp", 4), ("fsdp", 8))]
    assert peaks == sorted(peaks, reverse=True)
    assert plan("8b", "h100", TrainSpec(method="full", num_gpus=2, sharding="ddp"), {}).peak_allocated_bytes > peaks[0]


def test_largest_rank_decides_fit_and_batch():
    train = TrainSpec(method="lora", num_gpus=2, sharding="fsdp")
    from planner.fit import max_batch_size

    model, gpu = get_model("8b"), "rtx4090"
    best = max_batch_size(model, __import__("planner").get_gpu(gpu), train, calibrations={})
    assert best >= 1
    assert plan(model, gpu, train.with_(batch_size=best), {}).fits
    assert not plan(model, gpu, train.with_(batch_size=best + 1), {}).fits


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_gpus=0), "at least 1"),
    (dict(num_gpus=2), "needs a --sharding"),
    (dict(sharding="fsdp"), "needs --num-gpus 2"),
    (dict(num_gpus=2, sharding="ddp", offload="optimizer"), "offloads it"),
    (dict(num_gpus=2, sharding="zero2", offload="params"), "offloads it"),
    (dict(num_gpus=2, sharding="fsdp", optim="adamw_8bit"), "cannot run under FSDP"),
])
def test_bad_parallel_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSpec(**kwargs)


# ------------------------------------------------------------------ DeepSpeed ZeRO

def deepspeed_zero2(p: int, n: int) -> int:
    """estimate_zero2_model_states_mem_needs(total_params=p, num_gpus_per_node=n, cpu_offload=False)'s GPU bytes."""
    return 4 * p + int(16 * p / n)


def deepspeed_zero3(p: int, largest_layer: int, n: int) -> int:
    """estimate_zero3_model_states_mem_needs(..., cpu_offload=False)'s GPU bytes."""
    return 4 * largest_layer + int(18 * p / n)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero2_full_finetuning_against_deepspeed(n):
    """ZeRO-2, full fine-tuning with Adam in bf16: the planner's model states are 2P + 18P/N (16-bit
    parameters whole; 16-bit gradient, fp32 master, Adam moments and fp32 gradient partitioned);
    DeepSpeed's estimator says 4P + 16P/N: it keeps a whole 16-bit gradient (2P) on every GPU and
    does not count the 16-bit gradient partition, 2P - 2P/N more in all (equal at N = 1)."""
    model = get_model("8b")
    p = counts.total_params(model)
    planned = _states(model, TrainSpec(method="full", num_gpus=n, sharding="zero2"))
    assert planned == 2 * p + 18 * p // n
    assert deepspeed_zero2(p, n) - planned == 2 * p - 2 * p // n
    assert deepspeed_zero2(p, 1) == 2 * p + 18 * p  # the two agree on one GPU


@pytest.mark.parametrize("n", [2, 8])
def test_zero3_full_finetuning_against_deepspeed(n):
    """ZeRO-3: everything partitioned, 20P/N (DeepSpeed: 18P/N, no 16-bit gradient partition),
    plus the gathered layer and the prefetch bucket (DeepSpeed: 4 x the largest layer, its
    16-bit parameters and gradients)."""
    model = get_model("8b")
    p = counts.total_params(model)
    planned = _states(model, TrainSpec(method="full", num_gpus=n, sharding="zero3"))
    assert planned == 20 * p // n
    largest = counts.embedding_params(model)  # DeepSpeed's "largest layer" is a module: the embedding here
    ds = deepspeed_zero3(p, largest, n)
    assert abs(planned - (ds - 4 * largest)) == 2 * p // n
    negative = _states(model, TrainSpec(method="full", num_gpus=n, sharding="zero2"))
    assert abs(negative - (ds - 4 * largest)) > p  # ZeRO-2's states are not ZeRO-3's


def test_zero_lora_far_below_deepspeed_estimate():
    """The estimators assume every parameter trainable; with LoRA only the adapters have
    gradients and optimizer states: ZeRO-2 holds the 16-bit base whole (2P), the adapters whole
    in 16 bits and 18 bytes per adapter parameter over N."""
    model = get_model("8b")
    p, t, n = counts.total_params(model), counts.adapter_params(model, TrainSpec()), 4
    planned = _states(model, TrainSpec(method="lora", num_gpus=n, sharding="zero2"))
    assert planned == 2 * p + 2 * t + -(-2 * t // n) + -(-12 * t // n) + -(-4 * t // n)
    assert planned < deepspeed_zero2(p, n) / 2


def test_zero_offload_moves_states_off_the_gpu():
    base = TrainSpec(method="full", num_gpus=4, sharding="zero3")
    on = plan("8b", "h100", base, {}).components
    off = plan("8b", "h100", base.with_(offload="optimizer"), {}).components
    params = plan("8b", "h100", base.with_(offload="params"), {}).components
    assert on["optimizer/states"] > 0 and off["optimizer/states"] == 0 and off["weights/base"] == on["weights/base"]
    assert params["weights/base"] == 0 and params["optimizer/states"] == 0


@pytest.mark.parametrize("args", [
    ["--num-gpus", "0"],
    ["--num-gpus", "2"],
    ["--sharding", "fsdp"],
    ["--num-gpus", "2", "--sharding", "ddp", "--offload", "params"],
    ["--num-gpus", "2", "--sharding", "fsdp", "--optim", "paged_adamw_8bit"],
])
def test_cli_bad_parallel_input_one_line_exit_2(args):
    from click.testing import CliRunner

    from planner.cli.command import main

    result = CliRunner().invoke(main, ["--model", "7b", "--gpu", "rtx4090", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("plan: error: ")


def test_cli_parallel_table_json_csv():
    import csv
    import io
    import json

    from click.testing import CliRunner

    from planner.cli.command import main

    args = ["--model", "8b", "--gpu", "rtx4090", "--num-gpus", "2", "--sharding", "fsdp", "--method", "lora"]
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0
    assert "num_gpus=2 sharding=fsdp" in table.stdout and "parallel/unsharded_root" in table.stdout
    assert "LoRA fits 2 x rtx4090 with FSDP up to batch" in table.stdout
    plans = json.loads(CliRunner().invoke(main, args + ["--json"]).stdout)["plans"]
    assert plans[0]["settings"]["num_gpus"] == 2 and "parallel/prefetch" in plans[0]["components"]
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(main, args + ["--csv"]).stdout)))
    assert rows[0]["num_gpus"] == "2" and rows[0]["sharding"] == "fsdp"
