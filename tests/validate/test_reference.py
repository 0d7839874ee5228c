"""The pure-torch NF4 / FP4 reference against its definitions and against bitsandbytes.

Property tests (hypothesis) over shapes, dtypes, scales and special structure (zero blocks,
values on levels and midpoints) for nf4 and fp4, with and without double quantization.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from validate import reference as R
from validate.invariants import quant as Q

F = pytest.importorskip("bitsandbytes.functional")

# derandomize: the same examples on every CI run (a random search of 4 x 500 examples, run
# while writing these tests, found the domain rules in validate/invariants/quant.py).
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def bits(t):
    return Q._bits(t)


# ---------------------------------------------------------------- the code tables

def test_nf4_table_is_the_published_one_and_bitsandbytes():
    assert torch.equal(bits(R.nf4_levels()), bits(F.get_4bit_type("nf4", device="cpu")))
    assert R.nf4_levels()[7] == 0 and R.nf4_levels()[0] == -1 and R.nf4_levels()[15] == 1


def test_nf4_table_follows_from_normal_quantiles():
    derived = R.nf4_levels_from_quantiles()
    assert (derived - R.nf4_levels().double()).abs().max() < 2e-7  # fp32 rounding of the published values
    # negative control: another offset gives other levels
    assert (R.nf4_levels_from_quantiles(0.99) - R.nf4_levels().double()).abs().max() > 1e-2


def test_fp4_table_from_sign_exponent_mantissa():
    table = R.fp4_levels()
    assert torch.equal(bits(table), bits(F.get_4bit_type("fp4", device="cpu")))
    assert torch.equal(table[:8] * 12, torch.tensor([0, 0.0625, 8, 12, 4, 6, 2, 3]))
    assert torch.equal(table[9:], -table[1:8])
    assert bits(table[8]) == 0  # +0.0, like bitsandbytes' table (not -0.0)


def test_dynamic_map_equals_bitsandbytes():
    table = R.dynamic_map()
    assert table.numel() == 256 and torch.equal(table, table.sort().values)
    assert torch.equal(bits(table), bits(F.create_dynamic_map()))
    assert (table == 0).sum() == 1 and table.max() == 1


# ---------------------------------------------------------------- packing and rounding rules

def test_first_value_goes_to_the_high_nibble():
    packed = R.pack_nibbles(torch.tensor([1, 2, 15, 0]))
    assert packed.flatten().tolist() == [0x12, 0xF0]
    assert R.pack_nibbles(torch.tensor([1, 2]), high_nibble_first=False).flatten().tolist() == [0x21]
    assert R.unpack_nibbles(packed, 3).tolist() == [1, 2, 15]


def test_midpoint_goes_to_the_lower_level_and_clamps():
    levels = R.nf4_levels()
    mid = (levels[9] + levels[10]) / 2
    codes = R._nearest(torch.stack([mid, torch.nextafter(mid, torch.tensor(1.0)), torch.tensor(1.0)]), levels)
    assert codes.tolist() == [9, 10, 15]


def test_fp4_tiny_values_map_to_the_zero_codes():
    # bitsandbytes' table has +0 twice (codes 0 and 8): tiny negatives get code 0, tiny positives code 8
    codes = R._nearest(torch.tensor([-1e-4, 0.0, 1e-4]), R.fp4_levels())
    assert codes.tolist() == [0, 0, 8]


def test_all_zero_block_keeps_absmax_zero_and_dequantizes_to_zero():
    x = torch.zeros(128)
    x[64:] = torch.linspace(-1, 1, 64)
    q = R.quantize_4bit(x, "nf4")
    assert q.absmax[0] == 0 and q.absmax[1] == 1
    assert torch.equal(R.dequantize_4bit(q)[:64], torch.zeros(64))


# ---------------------------------------------------------------- bit for bit against bitsandbytes

@st.composite
def tensors(draw):
    ndim = draw(st.integers(1, 3))
    if ndim == 1:
        shape = (draw(st.integers(1, 3000)),)
    else:
        lead = tuple(draw(st.integers(1, 12)) for _ in range(ndim - 1))
        last = draw(st.one_of(st.sampled_from([64, 128, 192, 896]), st.integers(1, 300)))
        shape = (*lead, last)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 50.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale
    flat = x.view(-1)
    structure = draw(st.sampled_from(["none", "zero-block", "zero-tail", "on-levels", "on-midpoints"]))
    if structure == "zero-block":
        flat[:64] = 0
    elif structure == "zero-tail":
        flat[-(flat.numel() % 64 or 64):] = 0
    elif structure in ("on-levels", "on-midpoints"):
        # values exactly on levels or midpoints of the block's scale: the rounding edge cases
        levels = R.nf4_levels().double()
        points = levels if structure == "on-levels" else (levels[1:] + levels[:-1]) / 2
        idx = torch.randint(0, points.numel(), (flat.numel(),), generator=torch.Generator().manual_seed(seed))
        flat.copy_((points[idx] * scale).float())
        flat[::64] = scale  # each block's absmax
    return x.to(dtype)


def assert_bitexact(x, quant_type, double_quant):
    assume(Q.outside_bitexact_domain(x, double_quant) is None)
    result = Q.check_bitexact({"tensors": [x], "quant_type": quant_type, "double_quant": double_quant})
    assert result.passed, f"{tuple(x.shape)} {x.dtype}: {result.detail}"
    assert "dequant 0" in result.detail


@SETTINGS
@given(x=tensors())
def test_nf4_bitexact(x):
    assert_bitexact(x, "nf4", False)


@SETTINGS
@given(x=tensors())
def test_fp4_bitexact(x):
    assert_bitexact(x, "fp4", False)


@SETTINGS
@given(x=tensors())
def test_nf4_double_quant_bitexact(x):
    assert_bitexact(x, "nf4", True)


@SETTINGS
@given(x=tensors())
def test_fp4_double_quant_bitexact(x):
    assert_bitexact(x, "fp4", True)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(x=tensors(), quant_type=st.sampled_from(["nf4", "fp4"]), broken=st.sampled_from(["shift", "nibbles"]))
def test_broken_reference_is_rejected(x, quant_type, broken):
    """Negative control under hypothesis: a shifted codebook or swapped nibbles never pass."""
    assume(x.float().abs().max() > 0)
    case = Q.bitexact_case(quant_type, False, broken)
    case["tensors"] = [x]
    if broken == "nibbles":
        assume(x.numel() >= 2)
        q = R.quantize_4bit(x, quant_type)
        codes = R.unpack_nibbles(q.packed, x.numel())
        assume(bool((codes[0::2][: codes[1::2].numel()] != codes[1::2]).any()))
    assert not Q.check_bitexact(case).passed


def test_reference_fixed_tensors_cover_the_domain_rules():
    tensors = Q.bitexact_tensors()
    assert all(Q.dequant_exact_domain(tuple(x.shape)) for x in tensors)
    assert not Q.dequant_exact_domain((3, 96)) and Q.dequant_exact_domain((3, 128)) and Q.dequant_exact_domain((3, 97))


def test_bitsandbytes_cpu_dequant_outside_the_domain():
    """Documents the upstream behaviour the domain rule avoids.

    bitsandbytes 0.50's native CPU dequantize_4bit reads the wrong absmax for blocks that
    straddle rows when the last dimension is a multiple of 16 but not of 64. Whatever the
    CPU does, the reference is the definition: its round trip error stays NF4-like.
    """
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(0)) * 0.02
    ref = R.dequantize_4bit(R.quantize_4bit(x, "nf4"))
    assert Q.relative_error(x, ref) < 0.1
    packed, state = F.quantize_4bit(x, quant_type="nf4")
    out = F.dequantize_4bit(packed, state)
    if not torch.equal(out, ref):  # the AVX-512 kernel: wrong absmax, larger error
        assert Q.relative_error(x, out) > Q.relative_error(x, ref)


def test_reference_roundtrip_error_equals_bitsandbytes():
    x = Q.roundtrip_x(0)
    for quant_type in ("nf4", "fp4"):
        assert Q.relative_error(x, Q.reference_roundtrip(x, quant_type)) == Q.relative_error(x, Q.bnb_roundtrip(x, quant_type))


def test_half_widest_gaps():
    assert math.isclose(Q.half_widest_gap("nf4"), (1 - 0.6961928009986877) / 2, rel_tol=1e-6)
    assert math.isclose(Q.half_widest_gap("fp4"), (12 - 8) / 12 / 2, rel_tol=1e-6)
