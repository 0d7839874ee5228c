"""The one precision rule shared by `plan` and `probe`: which dtype a run computes in, and
what each precision scheme does with it. Pure Python (names, not torch dtypes).

- :func:`resolve_dtype` turns the asked-for dtype (``auto``, ``bf16``, ``fp16``, ``fp32``)
  into the dtype a device really uses: ``auto`` is bf16 where the device has it, else fp16;
  bf16 asked for on a device without it falls back to fp16. Either fallback comes with a note.
- :func:`scheme` is what the training loop does in that dtype under ``TrainSpec.precision``
  (README "The breakdown", docs/design.md "Precision schemes"):
  ``autocast`` (HF Trainer ``bf16=True`` / ``fp16=True``): weights in the compute dtype,
  forward under ``torch.autocast``; ``pure``: a plain loop on a 16-bit model, no autocast;
  ``mixed``: fp32 master weights with an autocast forward. An fp16 autocast run scales its
  loss with a GradScaler, as HF Trainer ``fp16=True`` does.

The planner turns a :class:`Scheme` into byte sizes (``planner.memory.terms.precision``), the
probes into torch dtypes (``probes.build.resolve_precision``).
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.model.specs import TrainSpec

COMPUTE_DTYPES = ("bf16", "fp16", "fp32")


def resolve_dtype(dtype: str, bf16_supported: bool, device: str = "this device"
                  ) -> tuple[str, tuple[str, ...]]:
    """The compute dtype actually used, and any note about the choice.

    ``auto``: bf16 where the device supports it (CUDA compute capability 8.0 and up, the
    CPU), else fp16 (with a note). ``bf16`` asked for without support (T4, V100) falls back
    to fp16, with a note. ``device`` names the device in the notes.
    """
    if dtype == "auto":
        if bf16_supported:
            return "bf16", ()
        return "fp16", (f"{device} has no bf16: using fp16 (with a GradScaler, as HF Trainer fp16=True)",)
    if dtype == "bf16" and not bf16_supported:
        return "fp16", (f"bf16 asked for, but {device} has no bf16: falling back to fp16",)
    return dtype, ()


@dataclass(frozen=True)
class Scheme:
    """The dtypes of one run, by name ("bf16", "fp16" or "fp32").

    ``compute``: activations, matmuls and the autocast dtype; ``weights``: the dtype the
    base model is loaded in (fp32 master weights under ``mixed``, else ``compute``);
    ``autocast``: the forward and the loss run under ``torch.autocast`` (every scheme but
    ``pure``, and never in fp32); ``grad_scaler``: an fp16 autocast run scales the loss.
    """

    compute: str
    weights: str
    autocast: bool
    grad_scaler: bool


def scheme(train: TrainSpec, dtype: str) -> Scheme:
    """The precision scheme of ``train`` in the resolved compute dtype ``dtype``."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"a resolved compute dtype is one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
    weights = "fp32" if train.precision == "mixed" else dtype
    autocast = train.precision != "pure" and dtype != "fp32"
    return Scheme(compute=dtype, weights=weights, autocast=autocast, grad_scaler=autocast and dtype == "fp16")
