"""The time model's memory-bound bytes worked by hand: the optimizer step with gradient
clipping, and peft's LoRA elementwise path with and without autocast."""
import pytest

from planner import TrainSpec
from planner.model.catalog import get_gpu
from planner.time import timing

H100 = get_gpu("h100-80gb")  # bf16: no GradScaler

# tiny (tests/planner/conftest.py), per layer: sum(in) = q 8 + k 8 + v 8 + o 8 + gate 8 + up 8 +
# down 16 = 64, sum(out) = 8 + 4 + 4 + 8 + 16 + 16 + 8 = 64, sum(in + out) = 128; two layers.
SUM_IN = SUM_OUT = 2 * 64
SUM_IN_OUT = 2 * 128


def nbytes(st, key):
    return st.terms.get(key, {}).get("bytes", 0)


def test_adamw_step_reads_and_clips_every_adapter_gradient(tiny):
    """LoRA r=2 on every Linear: 2*sum(in + out) fp32 elements (p = g = s = 4). torch's foreach
    AdamW moves 4p + 2g + 14s = 80 bytes an element, clip_grad_norm_ 3g = 12 more: 92."""
    train = TrainSpec(method="lora", rank=2, seq_len=4, dtype="bf16")
    st = timing.step_time(tiny, H100, train, "bf16")
    elements = 2 * SUM_IN_OUT
    assert nbytes(st, "optimizer/step") == elements * 92
    assert nbytes(st, "optimizer/step") != elements * 80  # negative control: without clipping


def test_fused_adamw_clips_too(tiny):
    """The fused kernel's one pass (2p + g + 4s = 28 bytes) and the clip's 3g = 12: 40."""
    train = TrainSpec(method="lora", rank=2, seq_len=4, dtype="bf16", optim="adamw_torch_fused")
    st = timing.step_time(tiny, H100, train, "bf16")
    assert nbytes(st, "optimizer/step") == 2 * SUM_IN_OUT * 40


@pytest.mark.parametrize("precision, per_in, per_out, e", [
    # autocast: cast to fp32 (2 + 4) and autocast's cast back (4 + 2); scale and add in bf16 (5 * 2)
    ("autocast", 12, 10, 2),
    # pure: cast to fp32 (2 + 4); the fp32 output scaled (4 + 4), added to the bf16 base output
    # into fp32 (2 + 4 + 4), cast back (4 + 2): 24; A and B read and write fp32
    ("pure", 6, 24, 4),
])
def test_lora_elementwise_bytes_with_and_without_autocast(tiny, precision, per_in, per_out, e):
    """peft's Linear.forward: forward T*(per_in*in + per_out*out) per adapted Linear, the same
    backward; the adapter matmuls move e*T*(in + out + 2r) forward."""
    t, r = 4, 2
    train = TrainSpec(method="lora", rank=r, seq_len=t, dtype="bf16", precision=precision)
    st = timing.step_time(tiny, H100, train, "bf16")
    assert nbytes(st, "adapters/elementwise") == 2 * t * (per_in * SUM_IN + per_out * SUM_OUT)
    fwd = e * t * (SUM_IN_OUT + 2 * r * 14)  # 7 Linears a layer, two layers
    assert nbytes(st, "adapters/matmul") == fwd + 2 * fwd + 4 * r * SUM_IN_OUT


def test_pure_qlora_has_no_adapter_casts_on_its_fp32_stream(tiny):
    """QLoRA without autocast: the hidden stream is fp32 already (no input cast, no cast back);
    scaling (4 + 4) and the fp32 sum (4 + 4 + 4) remain: 20 bytes per output element."""
    t = 4
    train = TrainSpec(method="qlora", rank=2, seq_len=t, dtype="bf16", precision="pure")
    st = timing.step_time(tiny, H100, train, "bf16")
    assert nbytes(st, "adapters/elementwise") == 2 * t * 20 * SUM_OUT
