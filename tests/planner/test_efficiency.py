"""The time model's size rules (planner.time.roofline), worked by hand, and variable-length data
(planner.time.data): padded batches, packed rows, hours per data set."""
import math
from dataclasses import replace

import pytest

from planner import TrainSpec, plan
from planner.model.catalog import get_gpu, get_model
from planner.time import roofline as R
from planner.time import timing
from planner.time.data import Data, data_step

A100, H100, T4 = get_gpu("a100-80gb"), get_gpu("h100-80gb"), get_gpu("t4")


def test_catalog_gpus_have_sm_counts_and_sourced_clocks():
    """Every catalog GPU has its SM count; the power-limited T4 and L4 sustain half their boost peak."""
    from planner.model.catalog import gpu_names
    assert all(get_gpu(n).sm_count > 0 for n in gpu_names())
    assert (A100.sm_count, H100.sm_count, T4.sm_count) == (108, 132, 40)
    assert T4.sustained_fraction == 0.50 and get_gpu("l4").sustained_fraction == 0.53
    assert A100.sustained_fraction == 1.0
    assert R.peak_flops(T4) == pytest.approx(65e12 * 0.50)


def test_one_full_wave_of_128_tiles_runs_at_the_ceiling():
    """13824 x 128 on 108 SMs: 108 tiles of 128 x 128, one full wave (256 x 128: 54 tiles,
    half a wave): the ceiling 0.75."""
    assert R.matmul_efficiency(108 * 128, 128, 512, A100) == pytest.approx(0.75)


def test_wave_and_tile_quantization_by_hand():
    """A 64 x 64 output is one tile: a 64 x 64 tile (reuse 32/64 of 128 x 128's) fills 1 of 108
    SMs: 0.75 * 0.5 / 108; a 128 x 128 tile would be a quarter full: 0.75 * 0.25 / 108."""
    assert R.matmul_efficiency(64, 64, 64, A100) == pytest.approx(0.75 * 0.5 / 108)
    # one more tile than a full wave: 109 tiles take two waves of 108 (128 x 128) -> 109/216;
    # 256 x 128 tiles: 55 of them, a 0.9909 full last row, 55/108 of one wave: 0.5046 (smaller)
    e = R.matmul_efficiency(109 * 128, 128, 512, A100)
    assert e == pytest.approx(0.75 * 109 / 216)
    # negative control: with no SM count, no wave quantization
    assert R.matmul_efficiency(109 * 128, 128, 512, replace(A100, sm_count=0)) == pytest.approx(0.75)


def test_split_k_fills_the_sms_for_a_long_k():
    """A 128 x 128 output is best cut in four 64 x 64 tiles (reuse 0.5; one 128 x 128 tile fills
    1 SM of 108 at reuse 1, worse). K 8192 splits 4 ways (K/4 >= 1024): 16 of 108 SMs busy;
    K 2048 splits 2 ways: 8; K 1000 not at all: 4."""
    assert R.matmul_efficiency(128, 128, 8192, A100) == pytest.approx(0.75 * 0.5 * 16 / 108)
    assert R.matmul_efficiency(128, 128, 2048, A100) == pytest.approx(0.75 * 0.5 * 8 / 108)
    assert R.matmul_efficiency(128, 128, 1000, A100) == pytest.approx(0.75 * 0.5 * 4 / 108)


def test_small_m_is_slower_per_flop():
    """Few tokens (M) fill few tiles: 256 tokens through a 4096 x 4096 Linear on the A100 run
    below 2048 tokens' efficiency; large M reaches the ceiling."""
    assert R.matmul_efficiency(256, 4096, 4096, A100) < R.matmul_efficiency(2048, 4096, 4096, A100) <= 0.75


def test_attention_by_length_head_dim_and_gpu_by_hand():
    """16k tokens, causal, head dim 128: 128 query blocks average 64.5 key blocks, each block
    paying 3 blocks' overhead: 64.5 / 67.5 of the FlashAttention-2 ceiling (0.70 forward, 0.60
    backward) on the A100; 108 rows x 128 blocks are whole waves of 108 SMs."""
    assert R.attention_efficiency(16384, 128, True, False, 108, A100) == pytest.approx(0.70 * 64.5 / 67.5)
    assert R.attention_efficiency(16384, 128, True, True, 108, A100) == pytest.approx(0.60 * 64.5 / 67.5)
    # 512 tokens: 4 blocks, 2.5 key blocks on average: 2.5 / 5.5
    assert R.attention_efficiency(512, 128, True, False, 27, A100) == pytest.approx(0.70 * 2.5 / 5.5)
    # non-causal: every query block sees all 4 key blocks: 4 / 7
    assert R.attention_efficiency(512, 128, False, False, 27, A100) == pytest.approx(0.70 * 4 / 7)
    # head dim 64 doubles the per-block overhead: 2.5 / 8.5
    assert R.attention_efficiency(512, 64, True, False, 27, A100) == pytest.approx(0.70 * 2.5 / 8.5)
    # Hopper runs FlashAttention-2 at half the A100's fraction; the T4 the memory-efficient kernel
    assert R.attention_efficiency(16384, 128, True, False, 132, H100) == pytest.approx(0.35 * 64.5 / 67.5)
    assert R.attention_efficiency(16384, 128, True, False, 40, T4) == pytest.approx(0.35 * 64.5 / 67.5)


def test_attention_speeds_up_with_length():
    rates = [R.attention_efficiency(s, 128, True, True, 32, A100) for s in (1024, 4096, 16384)]
    assert rates == sorted(rates) and rates[0] < rates[-1]


def test_small_kernels_stream_below_the_ceiling():
    """A kernel moving bandwidth x 2 us bytes runs at half the streaming ceiling; a huge one at it."""
    assert R.memory_efficiency(2e-6 * 320e9, T4) == pytest.approx(0.40)
    assert R.memory_efficiency(1e15, T4) == pytest.approx(0.80, rel=1e-6)


def test_the_host_sets_the_dispatch_time(tiny):
    """A tiny model is dispatch-bound: its step doubles on a 2-vCPU VM (20 us an op, 10 on a workstation)."""
    train = TrainSpec(method="lora", rank=2, seq_len=4)
    ops = timing.dispatched_ops(tiny, train)
    work = timing.step_time(tiny, H100, train, "bf16", R.DEFAULT.on_host("workstation"))
    cloud = timing.step_time(tiny, H100, train, "bf16", R.DEFAULT.on_host("cloud-2vcpu"))
    assert work.step_seconds == pytest.approx(ops * 10e-6) and cloud.step_seconds == pytest.approx(ops * 20e-6)
    with pytest.raises(ValueError, match="unknown host 'laptop'"):
        R.DEFAULT.on_host("laptop")
    p = plan("qwen2.5-0.5b", "t4", TrainSpec(), {}, {}, host="cloud-2vcpu")
    assert any(n.startswith("host cloud-2vcpu: ") for n in p.notes)


def test_the_sustained_clock_slows_compute_bound_steps():
    """T4 at half its boost peak: a compute-bound step (7B LoRA) takes longer than at full boost,
    by less than 2x (its memory-bound terms keep their bandwidth)."""
    m, train = get_model("7b"), TrainSpec(method="lora", seq_len=1024)
    slow = timing.step_time(m, T4, train, "fp16").gpu_seconds
    boost = timing.step_time(m, replace(T4, sustained_fraction=1.0), train, "fp16").gpu_seconds
    assert 1.5 * boost < slow < 2 * boost


# ---------------------------------------------------------------- variable-length data

def test_padded_length_by_hand():
    """Exponential lengths of mean 300, batch 4: the longest of 4 is 300 * (1 + 1/2 + 1/3 + 1/4)
    = 625 tokens; batch 1: 300; packed rows: the full 1024; capped at --seq-len."""
    train = TrainSpec(batch_size=4, seq_len=1024)
    assert Data(300).padded_len(train) == 625
    assert Data(300).padded_len(train.with_(batch_size=1)) == 300
    assert Data(300, packing=True).padded_len(train) == 1024
    assert Data(800).padded_len(train) == 1024  # 800 * 2.083 > 1024
    assert Data().padded_len(train) == 1024  # no mean length: every sample is --seq-len long
    assert Data(300).real_tokens(train) == 1200 and Data(300, packing=True).real_tokens(train) == 4096
    with pytest.raises(ValueError, match=r"--mean-len must be between 1 and --seq-len \(1024\), got 2000"):
        Data(2000).check(train)


def test_packed_documents_attend_one_by_one_with_flash_only():
    """A packed row of 1024 tokens of 256-token documents: 4 documents of 256^2/2 pairs each
    under flash_attention_2's variable-length path; SDPA attends the row as one sequence."""
    m = get_model("qwen2.5-0.5b")
    train = TrainSpec(method="lora", seq_len=1024, attn_implementation="flash_attention_2")
    data = Data(256, packing=True)
    assert data.segment(train) == 256 and data.segment(train.with_(attn_implementation="sdpa")) is None
    whole = timing.step_time(m, A100, train, "bf16").terms["attention/core"]["flops"]
    packed = timing.step_time(m, A100, train, "bf16", segment=256).terms["attention/core"]["flops"]
    assert packed == pytest.approx(whole / 4)  # 4 * 256^2 against 1024^2


def test_hours_for_real_data_by_hand():
    """Padded: 10M tokens at 4 x 300 real tokens a step: ceil(1e7 / 1200) steps of the step at
    625 tokens; packed: 4 x 1024 real tokens a step; with no mean length, the old hours."""
    m, gpu = get_model("qwen2.5-0.5b"), get_gpu("l4")
    train = TrainSpec(method="lora", batch_size=4, seq_len=1024)
    padded = data_step(m, gpu, train, "bf16", R.DEFAULT, Data(300))
    at_625 = timing.step_time(m, gpu, train.with_(seq_len=625), "bf16")
    assert padded.step.step_seconds == pytest.approx(at_625.step_seconds)
    assert padded.hours(10_000_000) == pytest.approx(math.ceil(1e7 / 1200) * at_625.step_seconds / 3600)
    assert padded.real_tokens_per_second == pytest.approx(1200 / at_625.step_seconds)
    assert padded.padding_fraction == pytest.approx(1 - 1200 / 2500)
    packed = data_step(m, gpu, train, "bf16", R.DEFAULT, Data(300, packing=True))
    full = timing.step_time(m, gpu, train, "bf16")
    assert packed.hours(10_000_000, 2) == pytest.approx(math.ceil(2e7 / 4096) * full.step_seconds / 3600)
    assert data_step(m, gpu, train, "bf16", R.DEFAULT, Data()).hours(10_000_000) == pytest.approx(
        timing.total_hours(full, train, 10_000_000))
    # padding wastes time: the packed run of the same data set is shorter
    assert packed.hours(10_000_000) < padded.hours(10_000_000)
