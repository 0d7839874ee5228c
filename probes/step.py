"""One training step, as a user's training loop runs it, with phase marks for measurement.

    loss = compute_loss(model, ids)     # forward + loss; the output (logits) is dropped here,
                                        # as HF Trainer's compute_loss does
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

Precision schemes (``TrainSpec.precision``, see :class:`probes.build.Precision`):
``autocast`` (HF Trainer ``bf16=True``): forward and loss under ``torch.autocast`` in the compute
dtype; ``pure``: no autocast; ``mixed``: fp32 model, autocast forward. fp16 with autocast uses a
``GradScaler`` (HF Trainer ``fp16=True``).

Every backend (cuda, cpu, fake) runs this same function; ``on_phase(name)`` is called when a
phase starts ("forward", "backward", "optimizer") and with "idle" when the step is done.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch._subclasses.fake_tensor import is_fake

from .build import Precision
from .kernels import cuda_autocast_layer_norm
from .mixer_kernels import fused_kernels

BNB_OPTIMIZERS = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit",
                  "paged_adamw_32bit": "PagedAdamW32bit"}
LR = 1e-4


class Unsupported(ValueError):
    """The settings cannot run here: bitsandbytes 8-bit / paged optimizers off CUDA, or fp16
    autocast with fp16 trainable weights (a GradScaler cannot unscale fp16 gradients)."""


def make_optimizer(params, optim: str, device: str) -> torch.optim.Optimizer:
    """The optimizer named as in HF ``TrainingArguments.optim``.

    adamw_torch -> ``AdamW(foreach=True)`` (the CUDA default, also on cpu/fake, where torch's
    own default would be the per-tensor loop); adamw_torch_fused -> ``fused=True``; the
    bitsandbytes 8-bit and paged optimizers (CUDA only); sgd.
    """
    params = [p for p in params if p.requires_grad]
    if optim == "adamw_torch":
        return torch.optim.AdamW(params, lr=LR, foreach=True)
    if optim == "adamw_torch_fused":
        return torch.optim.AdamW(params, lr=LR, fused=True)
    if optim == "sgd":
        return torch.optim.SGD(params, lr=LR)
    if optim in BNB_OPTIMIZERS:
        if device != "cuda":
            raise Unsupported(f"{optim} needs a CUDA GPU (bitsandbytes paged / 8-bit "
                                       f"optimizer states); not measurable on {device}")
        import bitsandbytes as bnb

        return getattr(bnb.optim, BNB_OPTIMIZERS[optim])(params, lr=LR)
    raise ValueError(f"unknown optimizer {optim!r}")


def make_scaler(precision: Precision, device: str, params=()):
    """A GradScaler for fp16 autocast (HF Trainer ``fp16=True``); None otherwise.

    Raises :class:`Unsupported` when a trainable parameter is fp16 (full fine-tuning of an
    fp16 model): the scaler refuses to unscale fp16 gradients, as HF Trainer does.
    """
    if not precision.grad_scaler:
        return None
    if any(p.requires_grad and p.dtype == torch.float16 for p in params):
        raise Unsupported("fp16 autocast needs fp32 trainable weights (GradScaler cannot unscale "
                          "fp16 gradients): use --precision mixed (fp32 master weights) or pure")
    return torch.amp.GradScaler("cuda" if device == "cuda" else "cpu")


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, device: str,
                    seed: int = 0) -> torch.Tensor:
    """Random token ids of shape (batch, seq): the probe's training data."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    return ids.to(device)


def compute_loss(model, ids: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Forward and loss; returns only the loss so the logits die before backward."""
    device_type = ids.device.type if ids.device.type != "meta" else "cpu"
    with torch.autocast(device_type=device_type, dtype=precision.compute,
                        enabled=precision.autocast):
        return model(input_ids=ids, labels=ids).loss


def _noop(_: str) -> None:
    return None


def train_step(model, optimizer, ids: torch.Tensor, precision: Precision, scaler=None,
               on_phase: Callable[[str], None] = _noop) -> torch.Tensor:
    """One step: forward + loss, backward, optimizer step, zero_grad(set_to_none=True).

    Returns the loss, detached (a 0-dim tensor; under the fake tracer it has no value).
    """
    # fp32 norms under CPU autocast, as a GPU keeps them, for the forward and for what
    # checkpointing recomputes in backward
    with cuda_autocast_layer_norm(model), fused_kernels(*getattr(model, "probe_kernels", ("", "torch"))):
        on_phase("forward")
        loss = compute_loss(model, ids, precision)
        on_phase("backward")
        (scaler.scale(loss) if scaler is not None else loss).backward()
    on_phase("optimizer")
    if scaler is not None and is_fake(loss):
        # scaler.step reads found_inf with .item(), which a fake tensor has no value for;
        # these are the same ops, assuming no inf/nan (the only case a trace can describe).
        scaler.unscale_(optimizer)
        optimizer.step()
        scaler.update()
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    on_phase("idle")
    return loss.detach()
