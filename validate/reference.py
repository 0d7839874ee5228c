"""A pure-torch reference for bitsandbytes' 4-bit (NF4 / FP4) and 8-bit blockwise quantization.

Written from the published definitions, not from bitsandbytes' code, so that it can be
compared with bitsandbytes bit for bit (validate/invariants/quant.py, tests/validate):

- NF4 (Dettmers et al. 2023, QLoRA, section 3 and appendix E): 16 levels from quantiles of
  N(0, 1), 8 on the positive side and 7 on the negative side plus an exact zero,
  normalized to [-1, 1]. :data:`NF4_LEVELS` holds the published values;
  :func:`nf4_levels_from_quantiles` rebuilds them from the construction.
- FP4 (bitsandbytes' documented FP4 code): 1 sign bit (the high bit of the nibble), 2
  exponent bits and 1 mantissa bit; the three non-sign bits ``e1 e0 m`` encode
  0 (e = 0, m = 0), the subnormal 0.0625 (e = 0, m = 1), and 2**(4 - e) * (1 + m / 2) for
  e = 1..3 (8, 12, 4, 6, 2, 3); the table is normalized by its largest value, 12. Zero has
  no sign in bitsandbytes' table: code 0b1000 holds +0.0, like code 0b0000.
- Blockwise absmax quantization: the flattened tensor is cut into blocks of ``blocksize``
  values (the last block may be shorter); each block is scaled by the reciprocal of its
  absolute maximum (``x * (1 / absmax)``, clamped to [-1, 1]) and every value takes the
  nearest level, found by comparing with the midpoints between sorted levels (a value
  exactly on a midpoint takes the lower level). absmax is kept in fp32. Two details follow
  bitsandbytes' arithmetic rather than the papers, for bit-exactness: a short last block
  is divided by its absmax instead, and stores its absmax floored at 1e-38 (see
  :func:`_blockwise_absmax`).
- Packing: two 4-bit codes per byte, the first value of a pair in the high nibble; an odd
  count is padded with one zero value.
- Double quantization (QLoRA section 3): the fp32 absmax values have their mean subtracted
  (the ``offset``) and are quantized to 8 bits in blocks of 256 with the dynamic tree code
  (Dettmers et al. 2022, 8-bit Optimizers via Block-wise Quantization): a sign bit, a run of
  zero bits giving a power-of-ten exponent, an indicator bit, and linear fraction bits for
  bins on [0.1, 1]; :func:`dynamic_map` builds the 256 values.
- Dequantization: level * absmax in fp32, then cast to the output dtype; with double
  quantization absmax = code8[q] * absmax2 + offset, in fp32.

The ``levels`` and ``high_nibble_first`` parameters exist so that the validator can build
deliberately broken quantizers (a shifted codebook, a swapped nibble order) as negative
controls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BLOCKSIZE = 64  # bitsandbytes' default 4-bit blocksize (bnb_4bit)
DQ_BLOCKSIZE = 256  # blocksize of the second (double) quantization

# QLoRA (Dettmers et al. 2023), appendix E: the exact NF4 values.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_OFFSET = 0.9677083  # the quantile offset QLoRA uses, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2


def nf4_levels_from_quantiles(offset: float = NF4_OFFSET) -> torch.Tensor:
    """Rebuild the NF4 levels from their construction (float64).

    Positive side: the N(0, 1) quantiles at 8 evenly spaced probabilities from ``offset``
    down to (but excluding) 0.5; negative side: the negated quantiles at 7 such points;
    plus an exact zero; everything divided by the largest value.
    """
    pos = torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1]
    neg = torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1]
    values = torch.cat([torch.special.ndtri(pos), torch.zeros(1, dtype=torch.float64),
                        -torch.special.ndtri(neg)])
    values = values / values.max()
    return values.sort().values


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels in code order (code i is the i-th smallest), fp32."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32)


def fp4_levels() -> torch.Tensor:
    """The 16 FP4 levels in code order (bit 3 = sign), normalized to [-1, 1], fp32."""
    values = []
    for code in range(16):
        exponent = (code >> 1) & 0b11
        mantissa = code & 0b1
        magnitude = 0.0625 * mantissa if exponent == 0 else 2.0 ** (4 - exponent) * (1 + mantissa / 2)
        values.append(-magnitude if code & 0b1000 and magnitude else magnitude)
    table = torch.tensor(values, dtype=torch.float32)
    return table / table.abs().max()


def levels(quant_type: str) -> torch.Tensor:
    if quant_type == "nf4":
        return nf4_levels()
    if quant_type == "fp4":
        return fp4_levels()
    raise ValueError(f"unknown 4-bit type {quant_type!r} (choose nf4 or fp4)")


def dynamic_map(exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The signed dynamic tree code of bitsandbytes' 8-bit blockwise quantization, sorted, fp32.

    With e leading zero bits after the sign (e = 0 .. exponent_bits - 1) the value is
    10**-e times a fraction; the bits after the indicator give 2**k fraction values
    (k = exponent_bits - 1 - e), the midpoints of 2**k equal bins on [0.1, 1] (computed
    in fp32 with torch.linspace). Both signs, plus 0 and 1: 2 * 127 + 2 = 256 values.
    """
    data: list[float] = []
    for k in range(exponent_bits):
        edges = torch.linspace(0.1, 1.0, 2 ** k + 1)
        mids = (edges[:-1] + edges[1:]) / 2.0
        scale = 10.0 ** (k - (exponent_bits - 1))
        data += (scale * mids).tolist()
        data += (-scale * mids).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    return torch.tensor(sorted(data), dtype=torch.float32)


def _nearest(scaled: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index into ``table`` of the nearest level for each value (midpoint rule).

    Levels are sorted (stable, so of two equal levels the lower code comes first); a value
    on a midpoint takes the lower level.
    """
    order = torch.sort(table, stable=True).indices
    ordered = table[order]
    midpoints = (ordered[:-1] + ordered[1:]) / 2
    # number of midpoints strictly below the value = position in the sorted table
    position = torch.searchsorted(midpoints, scaled.contiguous(), right=False)
    return order[position]


def _blockwise_absmax(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax per block, values scaled to [-1, 1]); flat is fp32, the last block may be short.

    Full blocks are scaled by the reciprocal of their absmax (floored at 1e-38 so that an
    all-zero block scales to zeros) and keep their absmax as is. A short last block follows
    bitsandbytes' arithmetic for it: divided by its absmax floored at 1e-38, and that floored
    value is what it stores (it differs from a reciprocal product by one ulp at times, which
    moves a value sitting on a midpoint).
    """
    n = flat.numel()
    full = n - n % blocksize
    body = flat[:full].view(-1, blocksize)
    absmax = body.abs().amax(dim=1)
    scaled = (body * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1.0, 1.0).reshape(-1)
    if full < n:
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.view(1)])
        scaled = torch.cat([scaled, (flat[full:] / tail_max).clamp(-1.0, 1.0)])
    return absmax, scaled


def pack_nibbles(codes: torch.Tensor, high_nibble_first: bool = True) -> torch.Tensor:
    """Two 4-bit codes per byte (first of each pair in the high nibble), shape (bytes, 1)."""
    codes = codes.to(torch.uint8)
    if codes.numel() % 2:
        raise ValueError("pack an even number of codes (pad first)")
    first, second = codes[0::2], codes[1::2]
    if not high_nibble_first:
        first, second = second, first
    return ((first << 4) | second).view(-1, 1)


def unpack_nibbles(packed: torch.Tensor, n: int, high_nibble_first: bool = True) -> torch.Tensor:
    """The first n 4-bit codes of a packed byte tensor, as int64."""
    flat = packed.reshape(-1).to(torch.int64)
    high, low = flat >> 4, flat & 0xF
    if not high_nibble_first:
        high, low = low, high
    return torch.stack([high, low], dim=1).reshape(-1)[:n]


@dataclass(frozen=True)
class Quantized4bit:
    """The reference's counterpart of bitsandbytes' packed data and QuantState."""

    packed: torch.Tensor  # uint8, (ceil(n/2), 1)
    absmax: torch.Tensor  # fp32 per block, or uint8 per block with double quantization
    shape: tuple[int, ...]
    dtype: torch.dtype
    quant_type: str
    blocksize: int
    code: torch.Tensor  # the 16 levels, fp32
    offset: torch.Tensor | None = None  # double quantization: fp32 mean of the absmax values
    absmax2: torch.Tensor | None = None  # double quantization: fp32 absmax per 256 blocks
    code2: torch.Tensor | None = None  # double quantization: the 256-value dynamic code

    @property
    def nested(self) -> bool:
        return self.offset is not None


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor,
                       blocksize: int = DQ_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise quantization with a sorted 256-value code: (uint8 codes, fp32 absmax)."""
    absmax, scaled = _blockwise_absmax(x.reshape(-1).float(), blocksize)
    return _nearest(scaled, code).to(torch.uint8).reshape(x.shape), absmax


def dequantize_blockwise(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                         blocksize: int = DQ_BLOCKSIZE) -> torch.Tensor:
    """Inverse of :func:`quantize_blockwise`, fp32."""
    values = code[q.reshape(-1).to(torch.int64)]
    per_value = absmax.repeat_interleave(blocksize)[: values.numel()]
    return (values * per_value).reshape(q.shape)


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = BLOCKSIZE,
                  double_quant: bool = False, levels_table: torch.Tensor | None = None,
                  high_nibble_first: bool = True) -> Quantized4bit:
    """Quantize a 16/32-bit float tensor to packed 4-bit codes with absmax per block."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"4-bit quantization takes fp32, bf16 or fp16, got {x.dtype}")
    table = levels(quant_type) if levels_table is None else levels_table
    flat = x.reshape(-1).float()
    absmax, scaled = _blockwise_absmax(flat, blocksize)
    codes = _nearest(scaled, table)
    if codes.numel() % 2:
        codes = torch.cat([codes, _nearest(torch.zeros(1), table)])
    packed = pack_nibbles(codes, high_nibble_first)
    common = dict(packed=packed, shape=tuple(x.shape), dtype=x.dtype, quant_type=quant_type,
                  blocksize=blocksize, code=table.clone())
    if not double_quant:
        return Quantized4bit(absmax=absmax, **common)
    offset = absmax.mean()
    code2 = dynamic_map()
    qabsmax, absmax2 = quantize_blockwise(absmax - offset, code2, DQ_BLOCKSIZE)
    return Quantized4bit(absmax=qabsmax, offset=offset, absmax2=absmax2, code2=code2, **common)


def block_absmax(q: Quantized4bit) -> torch.Tensor:
    """The fp32 absmax per 4-bit block (dequantizing the second level if nested)."""
    if not q.nested:
        return q.absmax
    return dequantize_blockwise(q.absmax, q.absmax2, q.code2, DQ_BLOCKSIZE) + q.offset


def dequantize_4bit(q: Quantized4bit, high_nibble_first: bool = True) -> torch.Tensor:
    """level * absmax in fp32, cast to the original dtype and shape."""
    n = math.prod(q.shape)
    codes = unpack_nibbles(q.packed, n, high_nibble_first)
    values = q.code[codes]
    per_value = block_absmax(q).repeat_interleave(q.blocksize)[:n]
    return (values * per_value).to(q.dtype).reshape(q.shape)
