"""The fake-tensor tracer equals a real CPU step measured with the same tracker, to the byte.

Exact assertions: peak, per-phase peaks, baseline and the whole breakdown by label at the
peak. Negative controls: a tracker that ignores frees, and a CPU run without the 4-bit
matmul expansion, both break the equality (so the comparison can fail).
"""
import pytest

from planner import TrainSpec

METHODS = ("full", "lora", "rslora", "qlora", "dora", "qdora")


def _train(method, checkpointing, **kw):
    settings = dict(batch_size=2, seq_len=64, dtype="bf16")
    settings.update(kw)
    return TrainSpec(method=method, gradient_checkpointing=checkpointing, **settings)


def _same(cpu_m, fake_m):
    assert fake_m.peak_allocated_bytes == cpu_m.peak_allocated_bytes
    assert fake_m.phase_peaks == cpu_m.phase_peaks
    assert fake_m.baseline_bytes == cpu_m.baseline_bytes
    assert fake_m.peak_phase == cpu_m.peak_phase
    assert fake_m.breakdown == cpu_m.breakdown
    assert fake_m.phase_breakdowns == cpu_m.phase_breakdowns


@pytest.mark.parametrize("checkpointing", [False, True], ids=["nogc", "gc"])
@pytest.mark.parametrize("method", METHODS)
def test_fake_trace_equals_cpu_step_to_the_byte(llama_tiny, method, checkpointing):
    from probes import cpu, fake

    train = _train(method, checkpointing)
    real = cpu.measure(llama_tiny, train)
    traced = fake.trace(llama_tiny, train)
    _same(real, traced)
    assert real.peak_allocated_bytes > real.baseline_bytes > 0
    assert set(real.phase_peaks) == {"forward", "backward", "optimizer"}
    assert real.attention_kernel == traced.attention_kernel == "flash"


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_tied_embeddings_and_biases_trace_exactly(qwen_tiny, method):
    from probes import cpu, fake

    train = _train(method, False, batch_size=1, seq_len=48)
    _same(cpu.measure(qwen_tiny, train), fake.trace(qwen_tiny, train))


@pytest.mark.parametrize("method, dtype, precision", [
    ("lora", "bf16", "pure"), ("lora", "bf16", "mixed"),
    ("lora", "fp16", "autocast"),   # GradScaler: unscale + step on fake tensors
    ("full", "fp16", "mixed"),
])
def test_other_precision_schemes_trace_exactly(llama_tiny, method, dtype, precision):
    from probes import cpu, fake

    train = _train(method, False, dtype=dtype, precision=precision, seq_len=32)
    _same(cpu.measure(llama_tiny, train), fake.trace(llama_tiny, train))


def test_fp16_autocast_on_fp16_trainable_weights_is_unsupported(llama_tiny):
    """HF Trainer fp16=True on an fp16 model fails (GradScaler cannot unscale fp16 grads)."""
    from probes import fake
    from probes.step import Unsupported

    with pytest.raises(Unsupported, match="precision mixed"):
        fake.trace(llama_tiny, _train("full", False, dtype="fp16", seq_len=16))


def test_a_tracker_that_ignores_frees_breaks_the_equality(llama_tiny):
    """Negative control: the same comparison fails when one side's tracker is wrong."""
    from probes import cpu, fake, kernels
    from probes.tracker import ByteTracker

    train = _train("lora", True)
    broken = cpu.measure(llama_tiny, train,
                         tracker=ByteTracker(expand=kernels.expansions(), free_tracking=False))
    traced = fake.trace(llama_tiny, train)
    assert broken.peak_allocated_bytes > traced.peak_allocated_bytes
    with pytest.raises(AssertionError):
        _same(broken, traced)


def test_the_4bit_matmul_expansion_counts_the_dequantized_weight(torch_stack):
    """gemm_4bit is one op to a dispatch mode; its GPU (and CPU) kernel dequantizes to a dense
    weight first. Expanded, the tracker sees exactly the dense bf16 weight plus the fp32
    absmax of the nested quant state on top of the output; fused, only the output."""
    import bitsandbytes as bnb

    from probes import kernels
    from probes.tracker import ByteTracker, quant_state_tensors

    torch = torch_stack
    out_f, in_f = 384, 256
    layer = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4", compress_statistics=True)
    layer.weight = bnb.nn.Params4bit(torch.randn(out_f, in_f, dtype=torch.bfloat16),
                                     requires_grad=False, quant_type="nf4", module=layer)
    layer = layer.to("cpu")
    layer.support_avx512bf16_for_cpu = False
    x = torch.randn(4, in_f, dtype=torch.bfloat16, requires_grad=True)
    extra = {}
    for name, expand in (("expanded", kernels.expansions()), ("fused", {})):
        tracker = ByteTracker(expand=expand)
        tracker.register([layer.weight, x, *quant_state_tensors(layer.weight.quant_state)], "state")
        tracker.reset()
        with tracker:
            y = layer(x)
        extra[name] = tracker.peak - tracker.baseline
        del y
        tracker.close()
    assert extra["fused"] == 4 * out_f * 2
    assert extra["expanded"] - extra["fused"] == out_f * in_f * 2 + (out_f * in_f // 64) * 4


def test_fake_model_has_no_memory_and_the_real_structure(llama_tiny, torch_stack):
    """Every fake parameter matches the real model's name, shape, dtype and class name."""
    from torch._subclasses.fake_tensor import FakeTensor

    from probes import build, fake

    train = _train("qdora", True)
    real = build.build(llama_tiny, train, "cpu")
    traced, _ = fake.build_fake(llama_tiny, train)
    def kind(p):  # fake parameters are FakeTensors marked as parameters
        if type(p).__name__ == "Params4bit":
            return "Params4bit"
        return "Parameter" if isinstance(p, torch_stack.nn.Parameter) else type(p).__name__

    real_params = {n: (tuple(p.shape), p.dtype, kind(p), p.requires_grad)
                   for n, p in real.named_parameters()}
    fake_params = {n: (tuple(p.shape), p.dtype, kind(p), p.requires_grad)
                   for n, p in traced.named_parameters()}
    assert fake_params == real_params
    assert all(isinstance(p, FakeTensor) for p in traced.parameters())
    four_bit = [p for p in traced.parameters() if type(p).__name__ == "Params4bit"]
    assert four_bit and all(p.quant_state is not None for p in four_bit)


def test_a_fake_4bit_build_does_not_poison_later_real_quantization(llama_tiny, torch_stack):
    """bitsandbytes caches its double-quant code table on the first device it sees; a meta
    build must leave a real table behind (regression: 'Cannot copy out of meta tensor')."""
    import bitsandbytes.functional as F

    from probes import fake

    F.name2qmap.pop("dynamic", None)
    fake.build_fake(llama_tiny, _train("qlora", False))
    assert F.name2qmap["dynamic"].device.type == "cpu"
    packed, state = F.quantize_4bit(torch_stack.randn(64, 64), compress_statistics=True,
                                    quant_type="nf4")
    assert packed.device.type == "cpu" and state.state2.code.device.type == "cpu"


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "sgd"])
def test_other_optimizers_trace_exactly(llama_tiny, optim):
    from probes import cpu, fake

    train = _train("lora", False, optim=optim, seq_len=32)
    _same(cpu.measure(llama_tiny, train), fake.trace(llama_tiny, train))
