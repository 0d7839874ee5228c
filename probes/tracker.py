"""Byte tracker: the live tensor bytes of a training step, its peak and per-phase peaks.

A :class:`ByteTracker` is a ``TorchDispatchMode``. Every op that runs under it goes through
:meth:`ByteTracker.__torch_dispatch__`; for each tensor the op returns, the tracker adds the
``nbytes`` of its *untyped storage* the first time that storage is seen (keyed on the storage,
so views, in-place ops and ``out=`` results are free) and registers a ``weakref.finalize`` on
the storage object that subtracts the bytes when the storage dies. Storages are preserved
Python objects in torch >= 2.1, so the finalizer runs exactly when the last tensor using the
storage is freed, not when our reference goes away. The peak is the maximum of the live bytes
after any op; it is kept overall and per phase (``forward``, ``backward``, ``optimizer``).

Tensors that exist before the measured step (weights, quant states, optimizer states, the
input batch) are registered with :meth:`ByteTracker.register` under a component label.
Tensors created under the tracker are labelled ``<phase>/<op>`` (``forward/mm``); gradients
can be relabelled ``grads`` once backward is done. A breakdown by label is snapshotted at the
overall peak and at each phase's peak: that is the "what is live at the peak" answer.

The same tracker measures real CPU tensors (``--device cpu``) and fake tensors
(``--device fake``, :mod:`probes.fake`): the storages of fake tensors have shapes, dtypes and
``nbytes`` but no memory, and they die like real ones, so both give the same numbers.

Storages resized in place (``UntypedStorage.resize_``: FSDP2 frees and re-allocates its
all-gathered parameters that way, keeping the storage object) are followed within
:meth:`ByteTracker.storage_resizes`. A sharded tensor (a DTensor: FSDP2's parameters, gradients
and optimizer states) counts its local shard: the mode sees DTensor ops before DTensor runs
them on the shards, and a DTensor's own storage reports the global size.

What it does not see: memory a kernel allocates internally without returning it as a tensor
(workspaces, the scratch of a fused kernel) and allocator rounding. Custom ops that a GPU
runs as several allocating steps can be expanded with ``expand`` (see :mod:`probes.fake`).
"""
from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from planner.units import PHASES

from .quant_state import parts as quant_state_parts


@dataclass(frozen=True)
class TrackerResult:
    """The figures of one tracked span (usually the measured steps).

    ``peak_bytes`` is the maximum live tensor bytes; ``phase_peaks`` the same per phase;
    ``peak_breakdown`` / ``phase_breakdowns`` are the live bytes by label at those peaks;
    ``baseline_bytes`` is what was live when the span started; ``ops`` maps op names seen
    to call counts (used to check which attention kernel ran).
    """

    peak_bytes: int
    baseline_bytes: int
    phase_peaks: dict = field(hash=False)
    peak_phase: str | None
    peak_breakdown: dict = field(hash=False)
    phase_breakdowns: dict = field(hash=False)
    ops: dict = field(hash=False)


def _op_name(func) -> str:
    """``aten._to_copy.default`` -> ``_to_copy``; custom ops keep their namespace."""
    name = getattr(func, "__name__", str(func))  # e.g. "_to_copy.default"
    base = name.split(".")[0]
    namespace = getattr(func, "namespace", "aten")
    return base if namespace == "aten" else f"{namespace}.{base}"


class ByteTracker(TorchDispatchMode):
    """Count live tensor bytes by untyped storage (see the module docstring).

    ``expand`` maps an op overload to a Python function that computes the same result with
    ops the tracker can see (re-entering the tracker); use it for fused custom kernels whose
    GPU implementation allocates intermediates. ``free_tracking=False`` makes frees invisible:
    a deliberately broken tracker, kept as the negative control of the tests.
    """

    def __init__(self, expand: dict | None = None, free_tracking: bool = True,
                 detail_at: dict[str, int] | None = None):
        super().__init__()
        self.expand = dict(expand or {})
        self.free_tracking = free_tracking
        # {phase: bytes}: when the live bytes first reach that value in that phase, keep the
        # live storages by (label, shape, dtype) in ``details[phase]`` (a second, slower pass
        # that explains a peak found by a first one).
        self.detail_at = dict(detail_at or {})
        self.details: dict[str, list[tuple]] = {}
        self.phase = "setup"
        self.live = 0
        self._storages: dict[int, tuple[int, str]] = {}  # storage key -> (nbytes, label)
        self._shapes: dict[int, tuple] = {}  # storage key -> (shape, dtype) of its first tensor
        self._finalizers: dict[int, weakref.finalize] = {}
        self._by_label: dict[str, int] = defaultdict(int)
        self.ops: dict[str, int] = defaultdict(int)
        self.reset()

    # ------------------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        """Start a new measured span: peaks restart from what is live now."""
        self.peak = self.live
        self.baseline = self.live
        self.peak_phase = self.phase if self.phase in PHASES else None
        self.peak_breakdown = dict(self._by_label)
        self.phase_peaks: dict[str, int] = {}
        self.phase_breakdowns: dict[str, dict] = {}
        self.ops.clear()

    def set_phase(self, phase: str) -> None:
        """Enter a phase; its peak starts from what is live now."""
        self.phase = phase
        if phase in PHASES and self.live > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.live
            self.phase_breakdowns[phase] = dict(self._by_label)

    def _add(self, storage, label: str, tensor: torch.Tensor | None = None) -> None:
        key = storage._cdata
        if key in self._storages:
            return
        nbytes = storage.nbytes()
        self._storages[key] = (nbytes, label)
        if self.detail_at and tensor is not None:
            self._shapes[key] = (tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
        self._by_label[label] += nbytes
        self.live += nbytes
        if self.free_tracking:
            self._finalizers[key] = weakref.finalize(storage, self._free, key)
        self._bump()

    def _bump(self) -> None:
        """After live bytes grew: the overall and phase peaks (and a detail snapshot)."""
        if self.live > self.peak:
            self.peak = self.live
            self.peak_phase = self.phase if self.phase in PHASES else None
            self.peak_breakdown = dict(self._by_label)
        phase = self.phase
        if phase in PHASES and self.live > self.phase_peaks.get(phase, -1):
            self.phase_peaks[phase] = self.live
            self.phase_breakdowns[phase] = dict(self._by_label)
        if self.detail_at.get(phase) == self.live and phase not in self.details:
            self.details[phase] = self._detail()

    def _resize(self, storage) -> None:
        """A storage resized in place: count its new size (0 frees it, as the allocator does)."""
        key = storage._cdata
        if key not in self._storages:
            if storage.nbytes():
                self._add(storage, f"{self.phase}/resize_")
            return
        old, label = self._storages[key]
        new = storage.nbytes()
        self._storages[key] = (new, label)
        self._by_label[label] += new - old
        self.live += new - old
        if new > old:
            self._bump()

    @contextlib.contextmanager
    def storage_resizes(self):
        """Follow ``UntypedStorage.resize_`` (FSDP2's free and re-allocation of its unsharded
        parameters) while the block runs."""
        original = torch.UntypedStorage.resize_

        def resize_(storage, size):
            out = original(storage, size)
            self._resize(storage)
            return out

        torch.UntypedStorage.resize_ = resize_
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original

    def _detail(self) -> list[tuple]:
        """Live storages grouped by (label, shape, dtype): (bytes, count, label, shape, dtype)."""
        groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        for key, (nbytes, label) in self._storages.items():
            shape, dtype = self._shapes.get(key, ((), "?"))
            g = groups[(label, shape, dtype)]
            g[0] += nbytes
            g[1] += 1
        return sorted(((b, n, *k) for k, (b, n) in groups.items()), reverse=True)

    def _free(self, key: int) -> None:
        nbytes, label = self._storages.pop(key)
        self._shapes.pop(key, None)
        self._finalizers.pop(key, None)
        self._by_label[label] -= nbytes
        if not self._by_label[label]:
            del self._by_label[label]
        self.live -= nbytes

    def register(self, tensors: Iterable[torch.Tensor], label: str) -> None:
        """Count tensors that already exist (weights, states, inputs) under ``label``."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                t = local_tensor(t)
                self._add(t.untyped_storage(), label, t)

    def relabel(self, tensors: Iterable[torch.Tensor], label: str) -> None:
        """Move the storages of ``tensors`` to another label (e.g. gradients -> ``grads``)."""
        for t in tensors:
            key = local_tensor(t).untyped_storage()._cdata
            if key in self._storages:
                nbytes, old = self._storages[key]
                if old == label:
                    continue
                self._by_label[old] -= nbytes
                if not self._by_label[old]:
                    del self._by_label[old]
                self._by_label[label] += nbytes
                self._storages[key] = (nbytes, label)

    def result(self) -> TrackerResult:
        return TrackerResult(
            peak_bytes=self.peak, baseline_bytes=self.baseline,
            phase_peaks=dict(self.phase_peaks), peak_phase=self.peak_phase,
            peak_breakdown=_sorted(self.peak_breakdown),
            phase_breakdowns={p: _sorted(b) for p, b in self.phase_breakdowns.items()},
            ops=dict(self.ops),
        )

    def close(self) -> None:
        """Detach every finalizer (call when done, so late frees do not touch this tracker)."""
        for fin in list(self._finalizers.values()):
            fin.detach()
        self._finalizers.clear()

    # ------------------------------------------------------------------ dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        self.ops[name] += 1
        expansion = self.expand.get(func)
        if expansion is not None:
            with self:
                out = expansion(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        label = f"{self.phase}/{name}"
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                t = local_tensor(t)  # a DTensor op (the mode sees it before DTensor): its local shard
                self._add(t.untyped_storage(), label, t)
        return out


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose storage holds ``t``'s bytes on this rank: a DTensor's local shard."""
    local = getattr(t, "_local_tensor", None)
    return t if local is None else local


def _sorted(breakdown: dict) -> dict:
    return dict(sorted(((k, v) for k, v in breakdown.items() if v), key=lambda kv: -kv[1]))


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                  ) -> dict[str, list[torch.Tensor]]:
    """Every tensor that lives across steps, by component label (see :meth:`register`).

    Trainable parameters are ``adapters/params`` when the model has frozen weights (a peft
    model) and ``weights/trainable`` otherwise; bitsandbytes quant states (every tensor of
    :data:`probes.quant_state.PARTS`, on the weight or, once FSDP2 has replaced the weight, on
    its ``Linear4bit``) are ``weights/quant_state``.
    """
    params = list(model.parameters())
    any_frozen = any(not p.requires_grad for p in params)
    groups: dict[str, list[torch.Tensor]] = defaultdict(list)
    states: set[int] = set()

    def add_quant_state(quant_state) -> None:
        if quant_state is not None and id(quant_state) not in states:
            states.add(id(quant_state))
            groups["weights/quant_state"].extend(quant_state_tensors(quant_state))

    for p in params:
        if p.requires_grad:
            groups["adapters/params" if any_frozen else "weights/trainable"].append(p)
        else:
            groups["weights/base"].append(p)
        if p.grad is not None:
            groups["grads"].append(p.grad)
        add_quant_state(getattr(p, "quant_state", None))
    # FSDP2 holds a 4-bit weight as a plain sharded parameter: its state stays on the Linear4bit
    for module in model.modules():
        add_quant_state(getattr(module, "quant_state", None))
    groups["buffers"].extend(model.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            groups["optimizer/states"].extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return dict(groups)


def quant_state_tensors(quant_state) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes QuantState, nested state included
    (:data:`probes.quant_state.PARTS`)."""
    return list(quant_state_parts(quant_state).values())


def register_state(tracker: ByteTracker, model, optimizer, extra: dict | None = None) -> None:
    """Register everything that lives across steps, plus ``extra`` {label: tensors}."""
    for label, tensors in state_tensors(model, optimizer).items():
        tracker.register(tensors, label)
    for label, tensors in (extra or {}).items():
        tracker.register(tensors, label)
