"""The measurement protocol: warm-up is not measured, peaks are reset before measuring,
NVML is sampled in the background, a busy GPU is refused, and out-of-memory is a result.

The CUDA protocol runs against a simulated ``torch.cuda`` (an allocator with peak stats) and
a fake NVML, so it is tested without a GPU; the ``gpu`` test runs it for real.
"""
import threading
import time

import pytest

from planner import TrainSpec
from planner.units import MIB


# ---------------------------------------------------------------------- tracked backends

def _distinct_storage_bytes(tensors):
    seen = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s._cdata] = s.nbytes()
    return sum(seen.values())


def test_warmup_is_not_measured_and_the_baseline_is_the_state(llama_tiny):
    """After warm-up the optimizer states exist: they are in the baseline, and the measured
    step creates none. Negative control: with no warm-up the measured step creates them."""
    from probes import build, step
    from probes.protocol import measure_tracked
    from probes.tracker import state_tensors

    train = TrainSpec(method="lora", batch_size=1, seq_len=32, dtype="bf16")
    precision = build.resolve_precision(train, "cpu")
    model = build.build(llama_tiny, train, "cpu")
    optimizer = step.make_optimizer(model.parameters(), "adamw_torch", "cpu")
    ids = step.synthetic_batch(1, 32, llama_tiny.vocab_size, "cpu")

    cold = measure_tracked(model, optimizer, ids, precision, steps=1, warmup=0)
    assert any(label.startswith("optimizer/") and label != "optimizer/states"
               for label in cold.phase_breakdowns["optimizer"])  # states made while measured

    warm = measure_tracked(model, optimizer, ids, precision, steps=1, warmup=1)
    state = [t for ts in state_tensors(model, optimizer).values() for t in ts] + [ids]
    assert warm.baseline_bytes == _distinct_storage_bytes(state)
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert warm.breakdown["optimizer/states"] == 2 * trainable + 4 * len(optimizer.state)
    assert warm.baseline_bytes > cold.baseline_bytes


def test_probe_refuses_no_warmup_and_weights_with_fake(llama_tiny):
    from probes.run import Probe

    train = TrainSpec(method="lora")
    with pytest.raises(ValueError, match="warmup"):
        Probe(llama_tiny, train, "cpu", warmup=0, steps=1)
    with pytest.raises(ValueError, match="--weights"):
        Probe(llama_tiny, train, "fake", warmup=1, steps=1, weights="somewhere")
    with pytest.raises(ValueError, match="device"):
        Probe(llama_tiny, train, "tpu", warmup=1, steps=1)


# ---------------------------------------------------------------------- simulated CUDA

class SimCuda:
    """torch.cuda's memory statistics over a toy allocator, with a call log."""

    def __init__(self, oom_at=None):
        self.allocated = 0
        self.reserved = 0
        self.peak = self.peak_reserved = 0
        self.log = []
        self.oom_at = oom_at

    def alloc(self, n):
        if self.oom_at is not None and self.allocated + n > self.oom_at:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.peak = max(self.peak, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, n):
        self.allocated -= n

    def synchronize(self):
        self.log.append("synchronize")

    def empty_cache(self):
        self.log.append("empty_cache")
        self.reserved = self.allocated

    def reset_peak_memory_stats(self):
        self.log.append("reset")
        self.peak, self.peak_reserved = self.allocated, self.reserved

    def max_memory_allocated(self):
        return self.peak

    def max_memory_reserved(self):
        return self.peak_reserved

    def memory_allocated(self):
        return self.allocated

    def memory_reserved(self):
        return self.reserved

    def memory_stats(self):
        return {"active_bytes.all.peak": self.peak}

    def init(self):
        self.log.append("init")


def make_step(cuda, sizes):
    """A step allocating activations in forward, grads in backward, a transient in the
    optimizer; the first (warm-up) step also makes a 1000-unit spike and the states."""
    calls = []

    def run_step(on_phase):
        first = not calls
        calls.append(on_phase)
        cuda.log.append("step")
        on_phase("forward")
        cuda.alloc(sizes["act"])
        if first:
            cuda.alloc(1000)
            cuda.free(1000)
        on_phase("backward")
        cuda.alloc(sizes["grad"])
        cuda.free(sizes["act"])
        on_phase("optimizer")
        if first:
            cuda.alloc(sizes["state"])
        cuda.alloc(sizes["tmp"])
        cuda.free(sizes["tmp"])
        cuda.free(sizes["grad"])
        on_phase("idle")

    return run_step, calls


def test_cuda_protocol_resets_after_warmup_and_measures_per_phase():
    from probes.cuda import measure_steps

    cuda = SimCuda()
    cuda.alloc(100)  # weights
    sizes = {"act": 50, "grad": 20, "state": 40, "tmp": 30}
    run_step, calls = make_step(cuda, sizes)
    ticks = iter([0.0, 2.0])
    m = measure_steps(run_step, cuda, steps=3, warmup=2, tokens_per_step=512,
                      clock=lambda: next(ticks))
    assert len(calls) == 5
    log = [e for e in cuda.log if e != "synchronize"]
    assert log[0] == "empty_cache"
    # the peaks are reset after the 2 warm-up steps and before the first measured one
    assert log[1:4] == ["step", "step", "reset"]
    assert log[4] == "step"
    # the warm-up spike (1000) is not in any measured figure
    assert m.phase_peaks == {"forward": 100 + 40 + 50, "backward": 100 + 40 + 50 + 20,
                             "optimizer": 100 + 40 + 20 + 30}
    assert m.peak_allocated_bytes == 210 and m.peak_phase == "backward"
    assert m.peak_reserved_bytes >= m.peak_allocated_bytes
    assert m.step_time_s == pytest.approx(2.0 / 3)
    assert m.tokens_per_second == pytest.approx(512 * 3 / 2.0)


def test_negative_control_without_reset_the_warmup_spike_shows():
    """The same simulated run, with resets disabled, reports the warm-up spike: the
    assertion above can fail."""
    from probes.cuda import measure_steps

    class NoReset(SimCuda):
        def reset_peak_memory_stats(self):
            self.log.append("reset")

    cuda = NoReset()
    cuda.alloc(100)
    run_step, _ = make_step(cuda, {"act": 50, "grad": 20, "state": 40, "tmp": 30})
    m = measure_steps(run_step, cuda, steps=1, warmup=1, tokens_per_step=1)
    assert m.peak_allocated_bytes >= 1100


def test_cuda_oom_in_the_step_is_a_result_with_what_was_allocated():
    from probes.cuda import OutOfMemory, measure_steps

    cuda = SimCuda(oom_at=150)
    cuda.alloc(100)
    run_step, _ = make_step(cuda, {"act": 60, "grad": 20, "state": 40, "tmp": 30})
    with pytest.raises(OutOfMemory) as info:
        measure_steps(run_step, cuda, steps=1, warmup=1, tokens_per_step=1)
    assert info.value.figures["allocated_bytes_at_oom"] == 100
    assert "out of memory" in str(info.value).lower()


def test_other_errors_in_the_step_are_not_swallowed():
    from probes.cuda import measure_steps

    def broken(on_phase):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        measure_steps(broken, SimCuda(), steps=1, warmup=1, tokens_per_step=1)


# ---------------------------------------------------------------------- fake NVML

class FakeNvml:
    """The pynvml functions the probe uses, over scripted memory readings."""

    class Memory:
        def __init__(self, total, used):
            self.total, self.used, self.free = total, used, total - used

    class Proc:
        def __init__(self, pid, used):
            self.pid, self.usedGpuMemory = pid, used

    def __init__(self, readings, processes=(), total=80 * 1024 * MIB):
        self.readings = list(readings)
        self.processes = list(processes)
        self.total = total
        self.reads = 0
        self.lock = threading.Lock()

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetMemoryInfo(self, handle):
        with self.lock:
            i = min(self.reads, len(self.readings) - 1)
            self.reads += 1
            return self.Memory(self.total, self.readings[i])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [self.Proc(pid, used) for pid, used in self.processes]

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlSystemGetDriverVersion(self):
        return "570.86.15"


def test_nvml_sampler_keeps_the_maximum_seen_in_the_background():
    from probes.cuda import NvmlSampler

    readings = [100, 300, 900, 200, 250, 250]
    nvml = FakeNvml(readings)
    sampler = NvmlSampler(nvml, nvml.nvmlDeviceGetHandleByIndex(0), interval_s=0.001)
    with sampler:
        deadline = time.monotonic() + 5
        while nvml.reads < len(readings) + 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert sampler.peak == 900
    assert sampler.samples >= len(readings)


def test_device_used_is_the_sampled_peak_minus_the_baseline_before_the_context():
    from probes.cuda import NvmlSampler, measure_steps

    nvml = FakeNvml([5000, 7000, 9000, 6000])
    cuda = SimCuda()
    run_step, _ = make_step(cuda, {"act": 1, "grad": 1, "state": 1, "tmp": 1})
    sampler = NvmlSampler(nvml, None, interval_s=0.001)

    def slow_step(on_phase):
        run_step(on_phase)
        time.sleep(0.01)

    m = measure_steps(slow_step, cuda, steps=2, warmup=1, tokens_per_step=1, sampler=sampler,
                      used_before_context=1000, context_bytes=500)
    assert m.device_used_bytes == 9000 - 1000
    assert m.extra["cuda_context_bytes"] == 500 and m.extra["nvml_samples"] >= 2


def test_a_gpu_used_by_others_is_refused_unless_forced():
    from probes.cuda import GpuBusy, check_idle, device_info

    busy = FakeNvml([700 * MIB], processes=[(1, 600 * MIB), (2, 100 * MIB)])
    info = device_info(busy, None, pid=2)
    assert info.other_processes_bytes == 600 * MIB and info.name == "NVIDIA H100 80GB HBM3"
    with pytest.raises(GpuBusy, match="--force"):
        check_idle(info, own_bytes=100 * MIB)
    check_idle(info, own_bytes=100 * MIB, force=True)
    # our own process and a little driver memory are fine
    idle = device_info(FakeNvml([300 * MIB], processes=[(2, 250 * MIB)]), None, pid=2)
    check_idle(idle, own_bytes=250 * MIB)
    # containers: no process list, but memory used beyond ours counts as others'
    hidden = device_info(FakeNvml([2000 * MIB]), None, pid=2)
    with pytest.raises(GpuBusy):
        check_idle(hidden, own_bytes=0)


def test_context_size_is_read_once_per_process(monkeypatch):
    from probes import cuda as cuda_mod

    monkeypatch.setattr(cuda_mod, "_CONTEXT", {})
    nvml = FakeNvml([1000, 1000 + 600, 99999])
    sim = SimCuda()
    assert cuda_mod.context_figures(sim, nvml, None) == (1000, 600)
    assert cuda_mod.context_figures(sim, nvml, None) == (1000, 600)
    assert sim.log.count("init") == 1


# ---------------------------------------------------------------------- OOM rows

def test_oom_in_the_step_becomes_a_row_and_other_errors_propagate(llama_tiny):
    import torch

    from probes import run as runner
    from probes.cuda import OutOfMemory

    probe = runner.make_probe(llama_tiny, TrainSpec(method="qlora", dtype="bf16"), "cpu")

    def oom(_):
        raise OutOfMemory("CUDA out of memory", {"allocated_bytes_at_oom": 123,
                                                  "peak_allocated_bytes": 456})

    row = runner.run(probe, "r1", measure_fn=oom)
    assert row["status"] == "oom" and row["peak_allocated_bytes"] is None
    assert row["peak_breakdown"]["allocated_bytes_at_oom"] == 123
    assert row["ratio"] is None and row["planned_peak_allocated_bytes"] > 0

    def torch_oom(_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    assert runner.run(probe, "r1", measure_fn=torch_oom)["status"] == "oom"

    def bug(_):
        raise KeyError("not a result")

    with pytest.raises(KeyError):
        runner.run(probe, "r1", measure_fn=bug)


def test_an_optimizer_the_device_cannot_run_is_an_unsupported_row(llama_tiny):
    from probes import run as runner

    probe = runner.make_probe(llama_tiny, TrainSpec(method="lora", optim="paged_adamw_8bit",
                                                    batch_size=1, seq_len=16), "fake")
    row = runner.run(probe, "r2")
    assert row["status"] == "unsupported" and "CUDA" in row["error"]


@pytest.mark.gpu
def test_real_cuda_probe_on_a_tiny_model(llama_tiny):
    from probes import run as runner

    probe = runner.make_probe(llama_tiny, TrainSpec(method="qlora", batch_size=2, seq_len=64),
                              "cuda", warmup=1, steps=2, force=True)
    row = runner.run(probe, "gpu")
    assert row["status"] == "ok"
    assert row["peak_reserved_bytes"] >= row["peak_allocated_bytes"] > 0
    assert row["device_used_bytes"] >= row["peak_reserved_bytes"]
    assert row["attention_kernel"] in ("flash", "efficient", "cudnn")
