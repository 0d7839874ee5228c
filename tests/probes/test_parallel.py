"""Several GPUs: rank 0 traced with the fake process group equals rank 0 of a real 2-process
gloo run on the CPU, to the byte, under FSDP2 and DDP (the tiny Llama, LoRA). About 20 s on
two cores: the traces, then two forked ranks (full fine-tuning under FSDP was checked the same way by hand:
equal too)."""
import json
import multiprocessing
import os

import pytest

from planner import TrainSpec

TRAIN = dict(batch_size=2, seq_len=64)
CASES = [("fsdp", "lora"), ("ddp", "lora")]


def _rank(rank, world, store, out, config, cases=CASES, train=TRAIN):
    """One rank of the gloo run: every case, measured with the byte tracker; rank 0 writes."""
    import torch
    import torch.distributed as dist

    from planner.model.catalog import model_from_config
    from probes import parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, store=dist.FileStore(store, world))
    try:
        spec = model_from_config(config, "llama-tiny")
        results = {}
        for sharding, method in cases:
            m = parallel.measure(spec, TrainSpec(method=method, **train), sharding, "cpu")
            results[f"{sharding}/{method}"] = {"peak": m.peak_allocated_bytes, "phases": m.phase_peaks}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def traced(llama_tiny):
    """Rank 0 of 2 traced with the fake process group, per case (also imports what the gloo
    ranks need before they fork, so that they start at once)."""
    from probes import parallel

    return {f"{s}/{m}": parallel.trace(llama_tiny, TrainSpec(method=m, **TRAIN), 2, s) for s, m in CASES}


def _gloo_rank0(folder, config, cases=CASES, train=TRAIN):
    """Rank 0 of a real 2-process gloo run (forked: the imports are done), per case."""
    store, out = str(folder / "store"), str(folder / "rank0.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, 2, store, out, config, cases, train)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    with open(out) as f:
        return json.load(f)


# gloo completes its collectives on its own threads, and a buffer an operation holds is freed
# when the work is found complete: most runs free it in the order the fake process group does
# (which completes at once), and some hold it a little longer (seen here: rank 0's QLoRA peak
# 2,412,120 or 2,491,864 B in about one run in three, where the trace and the other runs say
# 2,380,760 B). The tests take up to GLOO_RUNS real runs and ask that one equals the trace to
# the byte, and that none is below it (a late free can only raise the real peak).
GLOO_RUNS = 3


def _gloo_runs(folder, config, expected, cases=CASES, train=TRAIN) -> list[dict]:
    """Real gloo runs of rank 0 until one equals ``expected`` ({case: Measurement}) in every
    case, GLOO_RUNS at most."""
    runs = []
    for i in range(GLOO_RUNS):
        (folder / f"run{i}").mkdir()
        run = _gloo_rank0(folder / f"run{i}", config, cases, train)
        runs.append(run)
        if all(_same(expected[key], run[key]) for key in expected):
            break
    return runs


def _same(measurement, row) -> bool:
    return measurement.peak_allocated_bytes == row["peak"] and measurement.phase_peaks == row["phases"]


@pytest.fixture(scope="session")
def gloo_runs(traced, llama_tiny, tmp_path_factory):
    """Real 2-process gloo runs of rank 0, per case (:func:`_gloo_runs`)."""
    return _gloo_runs(tmp_path_factory.mktemp("gloo"), llama_tiny.hf_config(), traced)


@pytest.fixture(scope="session")
def gloo(gloo_runs):
    """The last real gloo run (the first that equals the trace, where one does)."""
    return gloo_runs[-1]


@pytest.mark.parametrize("case", [f"{s}/{m}" for s, m in CASES])
def test_trace_equals_gloo_rank0_to_the_byte(traced, gloo_runs, case):
    m = traced[case]
    assert any(_same(m, run[case]) for run in gloo_runs), [run[case]["peak"] for run in gloo_runs]
    assert all(run[case]["peak"] >= m.peak_allocated_bytes for run in gloo_runs)


def test_negative_control_other_configuration_differs(traced, gloo):
    """The check can fail: another configuration's trace is not this rank's figure."""
    assert traced["ddp/lora"].peak_allocated_bytes != gloo["fsdp/lora"]["peak"]
    assert traced["fsdp/lora"].phase_peaks != gloo["ddp/lora"]["phases"]


def test_process_group_destroyed(traced):
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_sharded_state_divides(traced):
    """FSDP holds 1/N of the base weights and of LoRA's trainable state; DDP all of them plus
    its gradient buckets (the size of the gradients)."""
    one = traced["ddp/lora"].phase_breakdowns["optimizer"]  # DDP: what one GPU holds
    two = traced["fsdp/lora"].phase_breakdowns["optimizer"]
    assert two["weights/base"] * 2 == one["weights/base"]
    assert two["adapters/params"] * 2 == one["adapters/params"]
    ddp = traced["ddp/lora"].phase_breakdowns["optimizer"]
    assert ddp["ddp/buckets"] == ddp["grads"] == one["adapters/params"]
    assert two["optimizer/states"] < one["optimizer/states"]


# ------------------------------------------------------------------ QLoRA under FSDP
# Loaded as FSDP+QLoRA training loads it: the packed 4-bit weights stored in the compute dtype
# (bnb_4bit_quant_storage), sharded like any parameter; each Linear4bit keeps its quant state,
# which bitsandbytes puts back on the all-gathered weight before each forward.
TRAIN_Q = dict(batch_size=1, seq_len=16)


@pytest.fixture(scope="session")
def qlora_fsdp(llama_tiny, tmp_path_factory):
    """(traced rank 0 of 2, gloo rank 0 of 2) for QLoRA under FSDP on the tiny Llama."""
    from probes import parallel

    traced = parallel.trace(llama_tiny, TrainSpec(method="qlora", **TRAIN_Q), 2, "fsdp")
    runs = _gloo_runs(tmp_path_factory.mktemp("gloo-qlora"), llama_tiny.hf_config(), {"fsdp/qlora": traced},
                      [("fsdp", "qlora")], TRAIN_Q)
    return traced, [run["fsdp/qlora"] for run in runs]


@pytest.mark.slow
def test_qlora_fsdp_trace_equals_gloo_rank0_to_the_byte(qlora_fsdp):
    traced, runs = qlora_fsdp
    assert any(_same(traced, run) for run in runs), [run["peak"] for run in runs]
    assert all(run["peak"] >= traced.peak_allocated_bytes for run in runs)


@pytest.mark.slow
def test_qlora_fsdp_sharded_weights_whole_quant_states(qlora_fsdp, llama_tiny):
    """Rank 0 holds half the packed weights (as on one GPU: the same bytes in bf16 elements)
    and every quant state whole; the planner's persistent terms are the traced ones, and its
    peak is within the bound (the check can fail: the plan of 4 ranks is not)."""
    from planner.memory.moments import step_memory

    traced, _ = qlora_fsdp
    opt = traced.phase_breakdowns["optimizer"]
    one = step_memory(llama_tiny, TrainSpec(method="qlora", **TRAIN_Q), "bf16")
    assert opt["weights/base"] * 2 == one.phases["optimizer"]["weights/base"]
    assert opt["weights/quant_state"] == one.phases["optimizer"]["weights/quant_state"] > 0
    planned = step_memory(llama_tiny, TrainSpec(method="qlora", num_gpus=2, sharding="fsdp", **TRAIN_Q), "bf16")
    for key in ("weights/base", "weights/quant_state", "adapters/params", "grads"):
        assert planned.phases["optimizer"][key] == opt[key], key
    assert abs(planned.peak_bytes / traced.peak_allocated_bytes - 1) <= PEAK_BOUND
    four = step_memory(llama_tiny, TrainSpec(method="qlora", num_gpus=4, sharding="fsdp", **TRAIN_Q), "bf16")
    assert abs(four.peak_bytes / traced.peak_allocated_bytes - 1) > PEAK_BOUND


def test_fsdp_stores_4bit_weights_in_the_compute_dtype():
    import torch

    from probes.build import bnb_config, resolve_precision

    fsdp = TrainSpec(method="qlora", num_gpus=2, sharding="fsdp")
    assert bnb_config(fsdp, resolve_precision(fsdp, "fake")).bnb_4bit_quant_storage == torch.bfloat16
    one = TrainSpec(method="qlora")
    assert bnb_config(one, resolve_precision(one, "fake")).bnb_4bit_quant_storage == torch.uint8


# ------------------------------------------------------------------ the planner against the trace
# Calibrated on the tiny Llama (benchmarks/parallel_accuracy.py: fsdp N 2 and 4, ddp N 2, lora /
# full / dora, seq 8 and 64, checkpointing off and on, 36 traces): planned / traced peak within
# 0.948 - 1.077, the worst under FSDP full fine-tuning, where the all-gathered root and layer are
# 40% of this toy's peak. Bound: 8%.
PEAK_BOUND = 0.08


def _planned(llama_tiny, case, n=2):
    from planner.memory.moments import step_memory

    sharding, method = case.split("/")
    return step_memory(llama_tiny, TrainSpec(method=method, num_gpus=n, sharding=sharding, **TRAIN), "bf16")


def test_planned_terms_equal_traced(traced, llama_tiny):
    """Each FSDP / DDP term against what the trace labels: sharded state at the optimizer step,
    the root unit and the all-gather buffer at the start of backward, DDP's buckets."""
    fsdp = _planned(llama_tiny, "fsdp/lora").phases
    opt = traced["fsdp/lora"].phase_breakdowns["optimizer"]
    for key in ("weights/base", "adapters/params", "grads"):
        assert fsdp["optimizer"][key] == opt[key], key
    # AdamW's step counters (4 bytes per trainable tensor, CPU scalars on CUDA) are not planned
    assert opt["optimizer/states"] - fsdp["optimizer"]["optimizer/states"] == 4 * 28
    assert fsdp["optimizer"]["optimizer/transient"] == opt["optimizer/_foreach_sqrt"]  # sharded too
    fwd = traced["fsdp/lora"].phase_breakdowns["forward"]  # inside the last layer: root and layer whole
    assert fsdp["forward"]["parallel/unsharded_root"] + fsdp["forward"]["parallel/unsharded_layer"] == fwd["forward/resize_"]
    assert fsdp["forward"]["parallel/prefetch"] == fwd["forward/empty"]
    back = traced["fsdp/lora"].phase_breakdowns["backward"]
    assert fsdp["backward"]["parallel/unsharded_root"] == back["forward/resize_"]
    assert fsdp["backward"]["parallel/prefetch"] == back["backward/empty"]
    ddp = _planned(llama_tiny, "ddp/lora").phases["optimizer"]
    assert ddp["parallel/grad_buckets"] == traced["ddp/lora"].phase_breakdowns["optimizer"]["ddp/buckets"]
    # negative control: one GPU's weights are not one rank's
    from planner.memory.moments import step_memory

    one = step_memory(llama_tiny, TrainSpec(method="lora", **TRAIN), "bf16").phases["optimizer"]
    assert one["weights/base"] != opt["weights/base"]


@pytest.mark.parametrize("case", [f"{s}/{m}" for s, m in CASES])
def test_planned_peak_within_bound(traced, llama_tiny, case):
    planned = _planned(llama_tiny, case)
    assert abs(planned.peak_bytes / traced[case].peak_allocated_bytes - 1) <= PEAK_BOUND


def test_peak_bound_negative_control(traced, llama_tiny):
    """A plan of 8 ranks is outside the bound of the traced rank of 2 (the bound can fail)."""
    assert abs(_planned(llama_tiny, "fsdp/lora", n=8).peak_bytes / traced["fsdp/lora"].peak_allocated_bytes - 1) > PEAK_BOUND


# ------------------------------------------------------------------ CUDA under torchrun (no GPU: simulated)

def test_torchrun_ranks():
    from probes.parallel import torchrun_ranks

    with pytest.raises(ValueError, match="torchrun --nproc-per-node 2"):
        torchrun_ranks(2, env={})
    with pytest.raises(ValueError, match="started 4 processes"):
        torchrun_ranks(2, env={"WORLD_SIZE": "4", "RANK": "0"})
    assert torchrun_ranks(2, env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == (1, 1)


class _Dist:
    def __init__(self):
        self.calls = []

    def is_initialized(self):
        return False

    def init_process_group(self, backend):
        self.calls.append(backend)


class _Cuda:
    def __init__(self):
        self.device = None

    def set_device(self, index):
        self.device = index


@pytest.mark.parametrize("sharding, warmup", [("fsdp", 1), ("ddp", 2)])
def test_measure_cuda_under_torchrun_simulated(llama_tiny, sharding, warmup):
    """Each rank: its GPU, NCCL, the CUDA protocol on the wrapped model (DDP measured after its
    bucket rebuild)."""
    from probes import parallel

    dist, cuda, seen = _Dist(), _Cuda(), {}

    def measure(spec, train, **kwargs):
        seen.update(kwargs)
        return "measurement", "info"

    train = TrainSpec(method="lora", num_gpus=2, sharding=sharding, **TRAIN)
    out = parallel.measure_cuda(llama_tiny, train, steps=3, warmup=1, env={"WORLD_SIZE": "2", "RANK": "1",
                                                                           "LOCAL_RANK": "1"},
                                dist=dist, cuda=cuda, measure=measure)
    assert out == ("measurement", "info", 1)
    assert dist.calls == ["nccl"] and cuda.device == 1
    assert seen["warmup"] == warmup and seen["steps"] == 3 and callable(seen["wrap"])


def test_probe_refuses_what_it_cannot_measure(llama_tiny):
    from probes.run import make_probe

    with pytest.raises(ValueError, match="--device fake traces rank 0"):
        make_probe(llama_tiny, TrainSpec(num_gpus=2, sharding="fsdp"), "cpu")
    with pytest.raises(ValueError, match="planned from formulas"):
        make_probe(llama_tiny, TrainSpec(num_gpus=2, sharding="zero3"), "fake")


def test_a_traced_rank_row_records_its_gpus_and_sharding(llama_tiny):
    from probes import run as runner
    from probes.store import check_row

    row = runner.run(runner.make_probe(llama_tiny, TrainSpec(method="lora", num_gpus=2, sharding="ddp", **TRAIN),
                                       "fake"), "test-run")
    check_row(row)
    assert row["status"] == "ok" and (row["num_gpus"], row["sharding"]) == (2, "ddp")
    assert row["ratio"] is not None
