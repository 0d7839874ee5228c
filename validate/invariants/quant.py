"""NF4 / FP4 invariants: the pure-torch reference (validate.reference) against bitsandbytes.

- bit for bit: packed codes, absmax and dequantized values of the reference equal
  bitsandbytes' quantize_4bit / dequantize_4bit, for nf4 and fp4, with and without double
  quantization (random tensors of many shapes here; hypothesis in tests/validate);
- the quantize -> dequantize relative error on N(0, 0.02) weights is inside a calibrated band
  (NF4 about 0.092, FP4 about 0.12) and NF4 beats FP4;
- per block, |x - dequant(x)| <= half the widest gap between levels times the block absmax;
- double quantization saves about 0.37 bits per parameter;
- a 4-bit model's quant-state storage equals the planner's weights/quant_state bytes exactly.

Facts about bitsandbytes 0.50 on CPU that shape these checks (found by these checks):
- its native CPU dequantize_4bit (AVX-512 path) uses the wrong absmax for blocks that
  straddle two rows when the last dimension is a multiple of 16 but not of the blocksize:
  :func:`dequant_exact_domain` keeps the bit-exact comparison off such shapes (Linear4bit
  weights have in_features a multiple of 64 and are not affected);
- its native CPU 8-bit blockwise quantizer (used for the second level of double
  quantization) is not round-to-nearest: about 0.16 % of codes take the farther neighbour near
  a midpoint, and an exact 0 becomes code 131 (2.1e-5) instead of the zero code; its portable
  kernel (CompositeExplicitAutograd) rounds to nearest, and the reference matches that one
  bit for bit (the native codes are checked for their excess error instead);
- dequantize_4bit of a tensor of 2 values or fewer (one packed byte) takes the legacy
  transposed path: a transposed result, a crash for 3-D shapes;
- its CPU dequantize_4bit returns shape (1, n) for a 1-D input of n values;
- its native FP4 dequantize returns -0.0 for code 0b1000 where its code table holds +0.0:
  dequantized values are compared as numbers (signed zeros equal), codes and absmax as bits.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from probes.quant_state import parts as quant_state_parts

from .. import models as M
from .. import reference as R
from ..result import InvariantResult, at_most, exact, within
from . import register

GROUP = "quant"


def _bnb():
    import bitsandbytes.functional as F

    return F


def _bits(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        return t
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _differ(a: torch.Tensor, b: torch.Tensor, as_bits: bool = True) -> int:
    """Elements that differ (bits, or values when as_bits is False); all of them if shapes differ."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return max(a.numel(), b.numel())
    if as_bits:
        return int((_bits(a) != _bits(b)).sum())
    return int((a != b).sum())


def dequant_exact_domain(shape: tuple[int, ...], blocksize: int = R.BLOCKSIZE) -> bool:
    """Shapes on which bitsandbytes' CPU dequantize_4bit is exact (conservative).

    Excluded: more than one row, a last dimension that is a multiple of 16 and not of the
    blocksize (blocks straddle rows; the AVX-512 kernel reads the wrong absmax there).
    """
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    last = shape[-1]
    return not (rows > 1 and last % 16 == 0 and last % blocksize != 0)


# Shapes: square and rectangular Linear-like weights, a Qwen2.5-0.5B-like width (896), an odd
# last dimension (portable fallback), a short last block (all zeros), 1-D, a row of zeros;
# three dtypes, three scales.
BITEXACT_SHAPES = ((64, 64), (96, 128), (8, 896), (7, 33), (3, 5), (1, 4097), (1000,), (16, 192), (3, 1))


def bitexact_tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(50_000 + seed)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    scales = (0.02, 1.0, 100.0)
    out = []
    for i, shape in enumerate(BITEXACT_SHAPES):
        x = torch.randn(shape, generator=g) * scales[i % 3]
        if i == 0:
            x[0] = 0.0  # an all-zero block: absmax 0
        if i == 5:
            x[..., -1] = 0.0  # an all-zero short last block
        out.append(x.to(dtypes[i % 3]))
    return out


def _portable_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    """bitsandbytes' device-independent 8-bit blockwise kernel (None if it cannot be reached)."""
    op = torch.ops.bitsandbytes.quantize_blockwise.default
    try:
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
        return op.redispatch(keys, x, code, blocksize)
    except Exception:  # private dispatch API: absent in some torch builds
        return None


def outside_bitexact_domain(x: torch.Tensor, double_quant: bool, blocksize: int = R.BLOCKSIZE) -> str | None:
    """Why bitsandbytes' own kernels disagree on x (None: x is in the domain).

    Two values or fewer pack into one byte, a packed tensor of shape (1, 1), which
    dequantize_4bit takes for a legacy transposed layout: it returns out.t() (a crash for
    3-D shapes). With double quantization, an all-zero second-level block (absmax values
    all equal to their mean, as with a single 4-bit block): the native CPU 8-bit kernel
    stores absmax 0 and code 0 (0/0), the portable kernel (and the reference) the 1e-38
    floor and the zero code.
    """
    if x.numel() <= 2:
        return "2 values or fewer (one packed byte: dequantize_4bit transposes)"
    if double_quant:
        absmax, _ = R._blockwise_absmax(x.reshape(-1).float(), blocksize)
        centred = absmax - absmax.mean()
        for start in range(0, centred.numel(), R.DQ_BLOCKSIZE):
            if not centred[start:start + R.DQ_BLOCKSIZE].any():
                return "all-zero second-level block"
    return None


# The native CPU 8-bit kernel is not round-to-nearest: near midpoints it can take the farther
# neighbour (excess error about 1e-5 of the block's absmax), and it stores an exact 0 as code
# 131 (2.1e-5) instead of the zero code (excess 2.1e-5). Bound on its excess error over
# nearest rounding, in units of the second-level block absmax: 1e-4, about three times the
# largest seen (3.0e-5) over 3000 random tensors (0.16 % of 948,854 codes off nearest), and
# a fifth of the smallest gap between 8-bit levels above 1e-3 (5.6e-4).
NATIVE_EXCESS_BOUND = 1e-4


def _native_excess(native_q: torch.Tensor, ref_q: torch.Tensor, scaled: torch.Tensor, code2: torch.Tensor):
    """(codes off nearest, max extra |level - value| of the native codes over nearest rounding)."""
    native_err = (code2[native_q.long()] - scaled).abs()
    nearest_err = (code2[ref_q.long()] - scaled).abs()
    return int((native_q != ref_q).sum()), float((native_err - nearest_err).max())


def check_bitexact(case: dict) -> InvariantResult:
    """The reference quantizer (as configured in case) against bitsandbytes, element by element.

    Codes, absmax and the double-quant state compare as bits; dequantized values as numbers
    (bitsandbytes' native FP4 path gives -0.0 where its table holds +0.0), flattened
    (its CPU dequantize returns (1, n) for a 1-D input). The second level of double
    quantization compares bit for bit with bitsandbytes' portable kernel; the codes its
    native kernel stored are checked for their excess error over nearest rounding
    (NATIVE_EXCESS_BOUND), and dequantization is compared from those stored codes.
    """
    F = _bnb()
    qt, dq = case["quant_type"], case["double_quant"]
    nibbles = case.get("high_nibble_first", True)
    counts = {"codes": 0, "absmax": 0, "second level": 0, "dequant": 0}
    native_off = native_total = 0
    native_excess = 0.0
    portable_checked = True
    elements, skipped, reshaped = 0, [], 0
    tensors = []
    for x in case["tensors"]:
        why = outside_bitexact_domain(x, dq)
        if why:
            skipped.append(f"{tuple(x.shape)}: {why}")
        else:
            tensors.append(x)
    for x in tensors:
        elements += x.numel()
        packed, state = F.quantize_4bit(x, quant_type=qt, compress_statistics=dq)
        ref = R.quantize_4bit(x, qt, double_quant=dq, levels_table=case.get("levels"), high_nibble_first=nibbles)
        counts["codes"] += _differ(packed, ref.packed)
        counts["absmax"] += _differ(state.code, ref.code)
        decode_with = ref
        if not dq:
            counts["absmax"] += _differ(state.absmax, ref.absmax)
        else:
            counts["second level"] += (_differ(state.offset, ref.offset) + _differ(state.state2.code, ref.code2))
            _, plain = F.quantize_4bit(x, quant_type=qt, compress_statistics=False)
            counts["absmax"] += _differ(plain.absmax, R.quantize_4bit(x, qt, levels_table=case.get("levels")).absmax)
            counts["second level"] += _differ(state.state2.absmax, ref.absmax2)
            portable = _portable_blockwise(plain.absmax - state.offset, state.state2.code, R.DQ_BLOCKSIZE)
            if portable is None:
                portable_checked = False
            else:
                counts["second level"] += _differ(portable[0], ref.absmax) + _differ(portable[1], ref.absmax2)
            native_total += ref.absmax.numel()
            if state.absmax.shape == ref.absmax.shape:
                scaled = R._blockwise_absmax(plain.absmax - state.offset, R.DQ_BLOCKSIZE)[1]
                off, excess = _native_excess(state.absmax, ref.absmax, scaled, ref.code2)
                native_off += off
                native_excess = max(native_excess, excess)
                decode_with = dataclasses.replace(ref, absmax=state.absmax)  # dequantize the same stored codes
            else:
                native_excess = math.inf
        if dequant_exact_domain(tuple(x.shape)):
            out = F.dequantize_4bit(packed, state)
            reshaped += out.shape != x.shape
            counts["dequant"] += _differ(out.reshape(-1), R.dequantize_4bit(decode_with, nibbles).reshape(-1),
                                         as_bits=False)
    mismatches = sum(counts.values())
    detail = (f"{qt}{' + double quant' if dq else ''}: {len(tensors)} tensors, {elements} values; "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if reshaped:
        detail += f"; {reshaped} dequantized with another shape (same values)"
    if skipped:
        detail += f"; skipped {'; '.join(skipped)}"
    bound = "mismatches == 0"
    passed = mismatches == 0 and bool(tensors)
    if dq:
        detail += (f"; native 8-bit kernel: {native_off} of {native_total} second-level codes off nearest, "
                   f"excess error {native_excess:.2g} of the block absmax")
        if not portable_checked:
            detail += " (portable kernel unreachable: second level checked against the native one)"
        bound += f", native excess <= {NATIVE_EXCESS_BOUND:g}"
        passed = passed and native_excess <= NATIVE_EXCESS_BOUND
    return InvariantResult("", mismatches, bound, passed, detail)


def shifted_levels(quant_type: str, shift: float = 0.01) -> torch.Tensor:
    """A broken codebook: every level moved by ``shift``."""
    return R.levels(quant_type) + shift


def bitexact_case(quant_type: str, double_quant: bool, broken: str | None = None, seed: int = 0) -> dict:
    case = {"tensors": bitexact_tensors(seed), "quant_type": quant_type, "double_quant": double_quant}
    if broken == "shift":
        case["levels"] = shifted_levels(quant_type)
    elif broken == "nibbles":
        case["high_nibble_first"] = False
    return case


for _qt, _dq, _broken in (("nf4", False, "shift"), ("fp4", False, "nibbles"),
                          ("nf4", True, "nibbles"), ("fp4", True, "shift")):
    register(f"quant.reference_bitexact[{_qt}{'+dq' if _dq else ''}]", GROUP, check_bitexact,
             lambda q=_qt, d=_dq: bitexact_case(q, d), lambda q=_qt, d=_dq, b=_broken: bitexact_case(q, d, b),
             "codebook shifted by +0.01" if _broken == "shift" else "nibble order swapped")


# ---------------------------------------------------------------- round-trip error band

ROUNDTRIP_SHAPE = (1024, 1024)
# Calibrated (python -m validate.calibrate quant.roundtrip): ||dequant(quant(x)) - x||_F / ||x||_F
# for x ~ N(0, 0.02) of 1024 x 1024, bitsandbytes blocksize 64, fp32, seeds 0-29, band = mean +- k * sigma.
# nf4: mean 0.0919725, sigma 4.33e-05, range [0.0918487, 0.0920575], k = 6 -> [0.0917126, 0.0922323]
# fp4: mean 0.121917,  sigma 7.41e-05, range [0.121795, 0.122077],   k = 6 -> [0.121473, 0.122362]
# Rounded outward. An off-by-one codebook or swapped nibbles give errors of order 1.
ROUNDTRIP_BAND = {"nf4": (0.0917, 0.0923), "fp4": (0.1214, 0.1224)}


def roundtrip_x(seed: int = 0) -> torch.Tensor:
    return torch.randn(ROUNDTRIP_SHAPE, generator=torch.Generator().manual_seed(60_000 + seed)) * 0.02


def bnb_roundtrip(x: torch.Tensor, quant_type: str) -> torch.Tensor:
    F = _bnb()
    packed, state = F.quantize_4bit(x, quant_type=quant_type)
    return F.dequantize_4bit(packed, state)


def reference_roundtrip(x: torch.Tensor, quant_type: str, decode_levels: torch.Tensor | None = None) -> torch.Tensor:
    """Reference quantize -> dequantize; ``decode_levels`` decodes with another codebook (a control)."""
    q = R.quantize_4bit(x, quant_type)
    if decode_levels is not None:
        q = dataclasses.replace(q, code=decode_levels)
    return R.dequantize_4bit(q)


def off_by_one_levels(quant_type: str) -> torch.Tensor:
    """A broken codebook: code i decodes to the level of code i + 1 (the last wraps around)."""
    return R.levels(quant_type).roll(-1)


def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((y.double() - x.double()).norm() / x.double().norm())


def check_roundtrip(case: dict) -> InvariantResult:
    err = relative_error(case["x"], case["dequantized"])
    low, high = ROUNDTRIP_BAND[case["quant_type"]]
    return within("", err, low, high, f"{case['quant_type']} ({case['by']}): relative Frobenius error on "
                                      f"N(0, 0.02) {ROUNDTRIP_SHAPE[0]}x{ROUNDTRIP_SHAPE[1]}")


def roundtrip_case(quant_type: str, seed: int = 0, broken: str | None = None) -> dict:
    x = roundtrip_x(seed)
    if broken == "shift":
        y, by = reference_roundtrip(x, quant_type, off_by_one_levels(quant_type)), "decoded off by one code"
    elif broken == "nibbles":
        F = _bnb()
        packed, state = F.quantize_4bit(x, quant_type=quant_type)
        y = R.dequantize_4bit(R.Quantized4bit(packed, state.absmax, tuple(x.shape), x.dtype, quant_type,
                                              R.BLOCKSIZE, state.code), high_nibble_first=False)
        by = "bitsandbytes codes read with swapped nibbles"
    else:
        y, by = bnb_roundtrip(x, quant_type), "bitsandbytes"
    return {"x": x, "dequantized": y, "quant_type": quant_type, "by": by}


def measure_roundtrip(quant_type: str, seed: int) -> float:
    return check_roundtrip(roundtrip_case(quant_type, seed)).measured


register("quant.roundtrip_error[nf4]", GROUP, check_roundtrip, lambda: roundtrip_case("nf4"),
         lambda: roundtrip_case("nf4", broken="shift"), "codebook shifted by one code")
register("quant.roundtrip_error[fp4]", GROUP, check_roundtrip, lambda: roundtrip_case("fp4"),
         lambda: roundtrip_case("fp4", broken="nibbles"), "nibble order swapped")


def check_nf4_beats_fp4(case: dict) -> InvariantResult:
    ratio = case["nf4"] / case["fp4"]
    return InvariantResult("", ratio, "nf4 error / fp4 error < 1", ratio < 1.0,
                           f"nf4 ({case['nf4_by']}) {case['nf4']:.5f} vs fp4 {case['fp4']:.5f} on N(0, 0.02)")


def _nf4_vs_fp4(off_by_one: bool = False) -> dict:
    x = roundtrip_x()
    if off_by_one:  # code i decoded as level i + 1: the classic off-by-one codebook
        nf4 = relative_error(x, reference_roundtrip(x, "nf4", off_by_one_levels("nf4")))
    else:
        nf4 = relative_error(x, bnb_roundtrip(x, "nf4"))
    return {"nf4": nf4, "fp4": relative_error(x, bnb_roundtrip(x, "fp4")),
            "nf4_by": "off-by-one codebook" if off_by_one else "bitsandbytes"}


register("quant.nf4_beats_fp4", GROUP, check_nf4_beats_fp4, _nf4_vs_fp4, lambda: _nf4_vs_fp4(True),
         "NF4 codebook shifted by one code")


# ---------------------------------------------------------------- per-block error bound

def half_widest_gap(quant_type: str) -> float:
    ordered = R.levels(quant_type).double().sort().values
    return float((ordered[1:] - ordered[:-1]).max() / 2)


# The only slack: fp32 rounding of level * absmax (relative 2**-24) and of x itself.
BLOCK_SLACK = 1e-6


def check_block_error(case: dict) -> InvariantResult:
    x, y, absmax, bs = case["x"].double().reshape(-1), case["dequantized"].double().reshape(-1), case["absmax"], R.BLOCKSIZE
    n = x.numel()
    pad = (-n) % bs
    err = torch.nn.functional.pad((x - y).abs(), (0, pad)).view(-1, bs).amax(dim=1)
    half = half_widest_gap(case["quant_type"])
    ratio = float((err / (absmax.double() * half).clamp(min=1e-300)).max())
    return at_most("", ratio, 1.0 + BLOCK_SLACK,
                   f"{case['quant_type']} ({case['by']}): max over {err.numel()} blocks of "
                   f"max|x - dequant| / (absmax * {half:.4f}), half the widest level gap")


def block_case(quant_type: str, swapped: bool = False) -> dict:
    F = _bnb()
    x = roundtrip_x(1)
    packed, state = F.quantize_4bit(x, quant_type=quant_type)
    if swapped:
        y = R.dequantize_4bit(R.Quantized4bit(packed, state.absmax, tuple(x.shape), x.dtype, quant_type,
                                              R.BLOCKSIZE, state.code), high_nibble_first=False)
    else:
        y = F.dequantize_4bit(packed, state)
    return {"x": x, "dequantized": y, "absmax": state.absmax, "quant_type": quant_type,
            "by": "swapped nibbles" if swapped else "bitsandbytes"}


for _qt in ("nf4", "fp4"):
    register(f"quant.block_error_bound[{_qt}]", GROUP, check_block_error, lambda q=_qt: block_case(q),
             lambda q=_qt: block_case(q, swapped=True), "codes read with swapped nibbles")


# ---------------------------------------------------------------- double quantization saves ~0.37 bit/param

DQ_SHAPE = (4096, 4096)
# QLoRA section 3: double quantization takes the absmax cost from 32/64 = 0.5 to
# 8/64 + 32/(64*256) = 0.127 bits per parameter, 0.373 saved; the per-weight code tables
# (16 + 256 fp32 values) take a few thousandths on a 4096 x 4096 weight.
DQ_SAVED_BAND = (0.365, 0.375)


def state_bytes(state) -> dict[str, int]:
    """Bytes of every tensor a bitsandbytes QuantState holds (the packed data not included)."""
    return {name: t.nbytes for name, t in quant_state_parts(state).items()}


def check_dq_saved(case: dict) -> InvariantResult:
    plain, nested, n = sum(case["plain"].values()), sum(case["nested"].values()), case["n"]
    saved = (plain - nested) * 8 / n
    return within("", saved, *DQ_SAVED_BAND,
                  f"bits/param saved on a {DQ_SHAPE[0]}x{DQ_SHAPE[1]} weight: quant state {plain} B -> {nested} B "
                  f"({', '.join(f'{k} {v}' for k, v in case['nested'].items())})")


def dq_case(compress: bool = True) -> dict:
    F = _bnb()
    x = torch.randn(DQ_SHAPE, generator=torch.Generator().manual_seed(70_000)) * 0.02
    _, plain = F.quantize_4bit(x, quant_type="nf4", compress_statistics=False)
    _, nested = F.quantize_4bit(x, quant_type="nf4", compress_statistics=compress)
    return {"plain": state_bytes(plain), "nested": state_bytes(nested), "n": x.numel()}


register("quant.double_quant_bits_saved", GROUP, check_dq_saved, dq_case, lambda: dq_case(compress=False),
         "double quantization requested but not applied")


# ---------------------------------------------------------------- storage == planner

def model_storage(model) -> dict[str, int]:
    """Bytes of the distinct tensors behind every Linear4bit: packed weights and quant states."""
    seen, parts = set(), {"packed": 0}
    for _, module in M.linear4bit_layers(model):
        weight = module.weight
        tensors = [("packed", weight.data), *quant_state_parts(weight.quant_state).items()]
        for key, t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            parts[key] = parts.get(key, 0) + storage.nbytes()
    return parts


def check_storage(case: dict) -> InvariantResult:
    parts = case["measured"]
    state = sum(v for k, v in parts.items() if k != "packed")
    state_diff = state - case["planner_state"]
    packed_diff = parts["packed"] - case["planner_packed"]
    return exact("", abs(state_diff) + abs(packed_diff),
                 f"{case['what']}: quant state measured {state} B vs planner {case['planner_state']} B "
                 f"({state_diff:+d}); packed {parts['packed']} B vs {case['planner_packed']} B ({packed_diff:+d}); "
                 f"measured {', '.join(f'{k} {v}' for k, v in parts.items() if k != 'packed')}",
                 what="bytes differing")


def storage_case(double_quant: bool, planner_double_quant: bool | None = None) -> dict:
    from planner import TrainSpec, get_model
    from planner.memory import terms as C

    spec = get_model(str(M.config_json_path()))
    train = TrainSpec(method="qlora", double_quant=double_quant if planner_double_quant is None else planner_double_quant)
    packed = spec.num_layers * C.packed_layer_bytes(spec)
    return {"measured": model_storage(M.four_bit(double_quant=double_quant)),
            "planner_state": C.weights_quant_state(spec, train), "planner_packed": packed,
            "what": f"tiny Llama, nf4{', double quant' if double_quant else ''}"}


for _dq in (False, True):
    register(f"quant.storage_equals_planner[{'dq' if _dq else 'no-dq'}]", GROUP, check_storage,
             lambda d=_dq: storage_case(d), lambda d=_dq: storage_case(d, planner_double_quant=not d),
             "planner figure for the other double-quant setting")

CALIBRATION = {
    "quant.roundtrip[nf4]": lambda seed: measure_roundtrip("nf4", seed),
    "quant.roundtrip[fp4]": lambda seed: measure_roundtrip("fp4", seed),
}
