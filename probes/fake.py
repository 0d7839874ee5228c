"""The no-GPU exact tracer: a full-size training step on fake tensors (``--device fake``).

Recipe (docs/design.md, "The no-GPU tracer"), and why each step is there:

1. Build the model and apply the method on the meta device with the shared builder
   (:func:`probes.build.build` with ``device="meta"``): transformers' bnb quantizer swaps in
   ``Linear4bit`` and bitsandbytes quantizes on meta (its ops have fake kernels), then
   ``prepare_model_for_kbit_training`` and ``get_peft_model`` run as for a real model. peft
   must run before materializing: inside FakeTensorMode its ``.to()`` fails, and adapters
   made outside the mode are re-faked on every op (new storages each time: not exact).
2. :func:`materialize` every parameter, buffer and bitsandbytes quant state as a fake CPU
   tensor of the same shape, stride and dtype inside one ``FakeTensorMode``: storages with
   ``nbytes`` and no memory. Tied parameters stay tied (one fake tensor per meta tensor).
   ``Module.to_empty`` is not used: it unties weights, and it cannot re-create a
   ``Params4bit`` (``_make_subclass`` refuses a FakeTensor); instead each 4-bit weight
   becomes a fake tensor whose class is :class:`FakeParams4bit`, a FakeTensor subclass
   named ``Params4bit`` (peft recognizes bitsandbytes weights by class name, e.g. in
   ``dequantize_module_weight`` for QDoRA), carrying ``quant_state``, ``blocksize``,
   ``quant_type`` and the other attributes bitsandbytes reads.
3. Run warm-up and measured steps of :func:`probes.step.train_step` under the mode with the
   byte tracker (:mod:`probes.protocol`). transformers' packed-sequence detection reads
   position-id values (data-dependent, and it treats fake tensors as "tracing" and then
   builds an explicit seq x seq mask, which would also change the attention kernel):
   :func:`plain_positions` answers "not packed", which is what it finds on real plain
   batches (synthetic batches are never packed).

The trace equals a real CPU step measured with the same tracker to the byte (tests), so it
is exact for torch allocations; what a GPU allocates beyond them is in :mod:`probes.kernels`.
"""
from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from planner import ModelSpec, TrainSpec

from .build import ProbeModel, build, probe_model
from .deltanet_kernels import fused_kernels, wants_fused
from .quant_state import replace_parts

QUANT_ATTRS = ("blocksize", "compress_statistics", "quant_type", "quant_storage",
               "bnb_quantized", "module")


class FakeParams4bit(FakeTensor):
    """A fake 4-bit weight: bitsandbytes / peft see a ``Params4bit`` by class name."""


FakeParams4bit.__name__ = FakeParams4bit.__qualname__ = "Params4bit"


def new_fake_mode() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=False)


def _fake_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialized fake CPU tensor with ``t``'s shape, stride and dtype (mode active)."""
    return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device="cpu")


def _fake_quant_state(qs, fake, states: set[int]) -> None:
    """A bitsandbytes quant state's tensors and its nested state's as fakes, once per state."""
    if qs is None or id(qs) in states:
        return
    states.add(id(qs))
    replace_parts(qs, fake)


def materialize_attributes(model: torch.nn.Module, fake=_fake_like, states: set[int] | None = None) -> None:
    """What is neither a parameter nor a buffer, in place (mode active): each module's
    bitsandbytes quant state and its plain tensor attributes left on meta (rotary tables)."""
    states = set() if states is None else states
    for module in model.modules():
        _fake_quant_state(getattr(module, "quant_state", None), fake, states)
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.device.type == "meta":
                setattr(module, name, fake(value))


def materialize(model: torch.nn.Module, fake_mode: FakeTensorMode) -> torch.nn.Module:
    """Replace every meta tensor of ``model`` by a fake CPU tensor, in place (see step 2)."""
    memo: dict[int, torch.Tensor] = {}
    states: set[int] = set()

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            memo[id(t)] = _fake_like(t)
        return memo[id(t)]

    with fake_mode:
        for module in model.modules():
            for name, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) in memo:
                    module._parameters[name] = memo[id(p)]
                    continue
                new = torch.nn.Parameter(_fake_like(p), requires_grad=p.requires_grad)
                if type(p).__name__ == "Params4bit":
                    _fake_quant_state(p.quant_state, fake, states)
                    new.__class__ = FakeParams4bit
                    new.quant_state = p.quant_state
                    for attr in QUANT_ATTRS:
                        setattr(new, attr, getattr(p, attr, None))
                memo[id(p)] = new
                module._parameters[name] = new
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = fake(b)
        materialize_attributes(model, fake, states)
    return model


@contextlib.contextmanager
def plain_positions():
    """transformers' packed-sequence check answers "not packed" (see the module docstring)."""
    from transformers import masking_utils

    original = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = original


def build_fake(model: ModelSpec | ProbeModel, train: TrainSpec) -> tuple[torch.nn.Module, FakeTensorMode]:
    """The model of ``train`` with fake parameters, and the mode to run it under."""
    model = build(model, train, "meta")
    mode = new_fake_mode()
    materialize(model, mode)
    return model, mode


def check_no_meta(model: torch.nn.Module) -> None:
    """Every parameter and buffer is a fake tensor (none left on meta)."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if not isinstance(t, FakeTensor)]
    if left:
        raise RuntimeError(f"not materialized as fake tensors: {', '.join(left[:5])}")


_GROUPED_MM_LIBRARY = []


def allow_grouped_mm_in_any_dtype() -> None:
    """Let fake tensors run ``aten._grouped_mm`` (transformers' default MoE experts path) in fp32.

    torch's meta kernel for it accepts bf16 inputs only (its fast CUTLASS path), but QLoRA's
    experts are fp32: bitsandbytes leaves fused expert weights unquantized and
    prepare_model_for_kbit_training casts them to fp32. The real kernels take fp32 (the CPU
    kernel directly; CUDA falls back to a loop of matmuls) and return the input dtype, so the
    meta kernel is replaced by one that gives the same output shape in the input dtype.
    Idempotent; the replacement lives for the process.
    """
    if _GROUPED_MM_LIBRARY:
        return
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    def grouped_mm(a, b, offs=None, bias=None, out_dtype=None):
        return _create_grouped_mm_output_tensor(a, b, offs, out_dtype or a.dtype)

    library = torch.library.Library("aten", "IMPL")
    library.impl("_grouped_mm", grouped_mm, "Meta", allow_override=True)
    _GROUPED_MM_LIBRARY.append(library)


@contextlib.contextmanager
def cuda_dropout():
    """Dropout as CUDA runs it: ``native_dropout``, which keeps a one-byte bool mask for
    backward. On the CPU, ``F.dropout`` draws a noise tensor in the input's dtype and keeps
    that (four times the bytes for fp32), so a trace that should show a GPU's memory swaps it in
    (torch's dropout dispatches to native_dropout on CUDA for 0 < p < 1 in training)."""
    import torch.nn.functional as F

    original = F.dropout

    def dropout(input, p=0.5, training=True, inplace=False):
        if not training or p == 0.0 or p == 1.0:
            return original(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    F.dropout = dropout
    try:
        yield
    finally:
        F.dropout = original


def trace(spec: ModelSpec | ProbeModel, train: TrainSpec, *, steps: int = 1, warmup: int = 1,
          tracker=None):
    """Trace ``steps`` training steps of ``train`` on ``spec`` (a planner model or any
    :class:`probes.build.ProbeModel`) with no memory.

    Returns a :class:`probes.protocol.Measurement` (no reserved / device / speed figures).
    """
    from .build import resolve_precision
    from .protocol import measure_tracked
    from .step import make_optimizer, make_scaler, synthetic_batch

    spec = probe_model(spec, train)
    precision = resolve_precision(train, "fake")
    allow_grouped_mm_in_any_dtype()
    model, mode = build_fake(spec, train)
    check_no_meta(model)
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    with mode, plain_positions(), cuda_dropout(), fused_kernels(wants_fused(train)):
        fake_ids = mode.from_tensor(ids)
        optimizer = make_optimizer(model.parameters(), train.optim, "fake")
        scaler = make_scaler(precision, "fake", model.parameters())
        return measure_tracked(model, optimizer, fake_ids, precision, steps=steps,
                               warmup=warmup, scaler=scaler, force_flash=not spec.eager,
                               timed=False, tracker=tracker)
