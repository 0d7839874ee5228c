"""Several GPUs: one rank of a data-parallel training step, under FSDP2 or DDP.

Each rank of a data-parallel run holds the same kinds of tensors, so rank 0 tells the per-GPU
memory. :func:`trace` plays rank 0 of ``num_gpus`` in this one process, on fake tensors, with
torch's fake process group (collectives return at once, nothing is sent); :func:`measure`
measures one rank of a real process group (gloo on the CPU in the tests, NCCL under
torchrun) with the same byte tracker and the same wrapping, so that the two agree.

How the model is wrapped, as training scripts do:

- ``fsdp``: FSDP2's ``fully_shard`` on every decoder layer, then on the root, over a 1-D device
  mesh of the ranks (``init_device_mesh("cpu", (N,))`` when tracing: a "cuda" mesh calls into
  CUDA). Parameters become DTensors holding 1/N of each; a layer's parameters are all-gathered
  before its forward and backward and freed after (FSDP2 resizes their storages in place,
  which the tracker follows: :meth:`probes.tracker.ByteTracker.storage_resizes`); gradients are
  reduce-scattered into 1/N shards.
- ``ddp``: ``DistributedDataParallel`` (bucket_cap_mb 25, gradients copied into flat buckets
  that are all-reduced, ``gradient_as_bucket_view=False``: torch's defaults). Its all-reduce runs
  through a comm hook that does what the built-in one does (divide the bucket by N in place,
  all-reduce it), which also hands over the buckets to count as persistent state.

Tracing, in this order (each step fails otherwise): build the model and apply the method on
meta (outside FakeTensorMode); FSDP: ``fully_shard`` outside the mode, then ``to_empty`` inside
it; DDP: materialize as the single-GPU tracer does, then construct DDP inside the mode, with
its cross-rank shape check skipped (it reads tensor data), no initial broadcast, and its bucket
rebuild skipped (it broadcasts real index data; the rebuilt buckets hold the same bytes).
The process group is always destroyed afterwards.

QLoRA / QDoRA under FSDP are loaded as FSDP+QLoRA training loads them: the packed 4-bit weights
stored in the compute dtype (``bnb_4bit_quant_storage``, :func:`probes.build.bnb_config`), so that
``fully_shard`` shards them like any parameter (it replaces each ``Params4bit`` by a plain one);
each ``Linear4bit`` keeps its quant state, made fake after ``to_empty``, and bitsandbytes puts it
back on the all-gathered weight before each forward (:func:`quant_state_from_module` does that
on fake tensors). A real gloo rank measures the same bytes (tests).
"""
from __future__ import annotations

import contextlib

import torch

from planner import ModelSpec, TrainSpec

from .build import ProbeModel

SHARDINGS = ("ddp", "fsdp")
DDP_WARMUP = 2  # DDP rebuilds its buckets in the second step: measure after it


class NotTraceable(ValueError):
    """A sharding and method the multi-GPU tracer cannot run (one line, usage)."""


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """torch's fake process group as rank 0 of ``world_size``; destroyed on exit."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized in this process")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers (the first ModuleList named ``layers``, under peft's wrappers too)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError("no decoder layers (a ModuleList named 'layers') to shard")


def shard_fsdp(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """``fully_shard`` every decoder layer, then the root, over all ranks."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


class _NoRebuild:
    """DDP's reducer, answering "no rebuild" (tracing only: the rebuild broadcasts data)."""

    def __init__(self, reducer):
        self._reducer = reducer

    def __getattr__(self, name):
        return getattr(self._reducer, name)

    def _rebuild_buckets(self) -> bool:
        return False


def wrap_ddp(model: torch.nn.Module, fake: bool = False):
    """``DistributedDataParallel(model)`` and a function giving its gradient buckets.

    The comm hook does what DDP's built-in all-reduce does, in place on the bucket."""
    import torch.distributed as dist
    import torch.nn.parallel.distributed as ddp_module

    buckets: dict[int, torch.Tensor] = {}
    world = dist.get_world_size()

    def allreduce(_, bucket):
        buffer = bucket.buffer()
        buckets[bucket.index()] = buffer
        buffer.div_(world)
        dist.all_reduce(buffer)
        future = torch.futures.Future()
        future.set_result(buffer)
        return future

    if fake:
        check = ddp_module._verify_param_shape_across_processes
        ddp_module._verify_param_shape_across_processes = lambda *args, **kwargs: None
        try:
            wrapped = ddp_module.DistributedDataParallel(model, init_sync=False)
        finally:
            ddp_module._verify_param_shape_across_processes = check
        wrapped.reducer = _NoRebuild(wrapped.reducer)
    else:
        wrapped = ddp_module.DistributedDataParallel(model)
    wrapped.register_comm_hook(None, allreduce)
    return wrapped, lambda: {"ddp/buckets": list(buckets.values())}


def check_traceable(train: TrainSpec, sharding: str) -> None:
    """Refuse what the multi-GPU tracer does not run (NotTraceable, one line)."""
    if sharding not in SHARDINGS:
        raise NotTraceable(f"sharding {sharding!r} is not traced (traced: {', '.join(SHARDINGS)}; "
                           "DeepSpeed ZeRO is planned from formulas)")


def sharded_train(train: TrainSpec, num_gpus: int, sharding: str) -> TrainSpec:
    """``train`` on ``num_gpus`` under ``sharding``: what the builder reads (QLoRA under FSDP
    stores its 4-bit weights in the compute dtype, :func:`probes.build.bnb_config`)."""
    import dataclasses

    if num_gpus < 2 or (train.num_gpus, train.sharding) == (num_gpus, sharding):
        return train
    return dataclasses.replace(train, num_gpus=num_gpus, sharding=sharding)


@contextlib.contextmanager
def quant_state_from_module():
    """bitsandbytes' ``Linear4bit`` finds its quant state again on the unsharded weight FSDP2
    all-gathered, as in a real run, on fake tensors too.

    FSDP2 holds a 4-bit weight (stored in the compute dtype) as a plain parameter; before
    each forward ``fix_4bit_weight_quant_state_from_module`` wraps the all-gathered weight in
    a new ``Params4bit`` (``_make_subclass``: the same storage, no bytes) carrying the state
    kept on the module. ``_make_subclass`` refuses a FakeTensor, so here the fake weight
    becomes a :class:`probes.fake.FakeParams4bit` in place, with the module's state: what the
    forward reads (and peft's ``dequantize_module_weight``, by class name, for QDoRA)."""
    import bitsandbytes.nn.modules as bnb_modules
    from torch._subclasses.fake_tensor import FakeTensor

    from .fake import FakeParams4bit

    original = bnb_modules.fix_4bit_weight_quant_state_from_module

    def fix(module) -> None:
        weight = module.weight
        if getattr(weight, "quant_state", None) is not None or not isinstance(weight, FakeTensor):
            return original(module)
        state = module.quant_state
        weight.__class__ = FakeParams4bit
        weight.quant_state = state
        weight.blocksize, weight.quant_type = state.blocksize, state.quant_type
        weight.compress_statistics = state.nested
        weight.quant_storage, weight.bnb_quantized, weight.module = module.quant_storage, True, None

    bnb_modules.fix_4bit_weight_quant_state_from_module = fix
    try:
        yield
    finally:
        bnb_modules.fix_4bit_weight_quant_state_from_module = original


def build_traced(spec: ProbeModel, train: TrainSpec, sharding: str):
    """Inside :func:`fake_process_group`: the model of ``train`` built on meta, sharded or
    wrapped, and materialized as fake tensors, in the order that works (module docstring).
    Returns (module to train, model, fake mode, state function or None); a DDP wrapper is made
    under the mode by :func:`wrap_ddp` (``fake=True``) by the caller."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .build import build
    from .fake import materialize, materialize_attributes, new_fake_mode

    model = build(spec, train, "meta")
    if sharding == "fsdp":
        # to_empty copies meta tensors into the mode (and DTensor ops meet real ones)
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        shard_fsdp(model)
        with mode:
            model.to_empty(device="cpu")
            materialize_attributes(model)  # the quant states on each Linear4bit, rotary tables
    else:
        mode = new_fake_mode()
        materialize(model, mode)
    return model, mode


def trace(spec: ModelSpec | ProbeModel, train: TrainSpec, num_gpus: int, sharding: str, *,
          steps: int = 1, warmup: int = 1, tracker=None):
    """Rank 0's memory of ``train`` on ``num_gpus`` GPUs under ``sharding``, traced on fake
    tensors with the fake process group: a :class:`probes.protocol.Measurement`. ``tracker``
    may be passed in (one with ``detail_at``, to list what is live at each phase's peak)."""
    from .build import probe_model, resolve_precision
    from .fake import allow_grouped_mm_in_any_dtype, cuda_dropout, plain_positions
    from .protocol import measure_tracked
    from .step import make_optimizer, synthetic_batch

    check_traceable(train, sharding)
    train = sharded_train(train, num_gpus, sharding)
    spec = probe_model(spec, train)
    precision = resolve_precision(train, "fake")
    allow_grouped_mm_in_any_dtype()
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, "cpu")
    with fake_process_group(num_gpus):
        model, mode = build_traced(spec, train, sharding)
        quant = quant_state_from_module() if train.is_quantized and sharding == "fsdp" else contextlib.nullcontext()
        with mode, plain_positions(), cuda_dropout(), quant:
            wrapped, state = model, None
            if sharding == "ddp":
                wrapped, state = wrap_ddp(model, fake=True)
                warmup = max(warmup, DDP_WARMUP)
            fake_ids = mode.from_tensor(ids)
            optimizer = make_optimizer(model.parameters(), train.optim, "fake")
            return measure_tracked(wrapped, optimizer, fake_ids, precision, steps=steps, warmup=warmup,
                                   force_flash=not spec.eager, timed=False, state=state, resizes=True,
                                   tracker=tracker)


def measure(spec: ModelSpec | ProbeModel, train: TrainSpec, sharding: str, device: str, *,
            steps: int = 1, warmup: int = 1, tracker=None):
    """This rank's memory of ``train`` under ``sharding`` in the process group already
    initialized (gloo on ``device="cpu"``), measured with the byte tracker as :func:`trace`
    measures rank 0."""
    from .build import build, probe_model, resolve_precision
    from .fake import cuda_dropout
    from .protocol import measure_tracked
    from .step import make_optimizer, synthetic_batch

    import torch.distributed as dist

    check_traceable(train, sharding)
    train = sharded_train(train, dist.get_world_size(), sharding)
    spec = probe_model(spec, train)
    precision = resolve_precision(train, device)
    model = build(spec, train, device)
    state = None
    if sharding == "fsdp":
        wrapped = shard_fsdp(model, device)
    else:
        wrapped, state = wrap_ddp(model)
        warmup = max(warmup, DDP_WARMUP)
    ids = synthetic_batch(train.batch_size, train.seq_len, spec.vocab_size, device)
    optimizer = make_optimizer(model.parameters(), train.optim, device)
    with cuda_dropout():
        return measure_tracked(wrapped, optimizer, ids, precision, steps=steps, warmup=warmup,
                               force_flash=not spec.eager, timed=False, state=state, resizes=True,
                               tracker=tracker)


def torchrun_ranks(num_gpus: int, env=None) -> tuple[int, int]:
    """(rank, local rank) of this process under torchrun, which must run ``num_gpus`` ranks;
    ValueError (one line, how to launch it) otherwise."""
    import os

    env = os.environ if env is None else env
    launch = (f"run it under torchrun, one process per GPU: torchrun --nproc-per-node {num_gpus} "
              f"-m probes.cli --device cuda --num-gpus {num_gpus} ...")
    if "WORLD_SIZE" not in env or "RANK" not in env:
        raise ValueError(f"--device cuda --num-gpus {num_gpus}: {launch}")
    if int(env["WORLD_SIZE"]) != num_gpus:
        raise ValueError(f"--num-gpus {num_gpus} but torchrun started {env['WORLD_SIZE']} processes: {launch}")
    return int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))


def measure_cuda(spec: ModelSpec | ProbeModel, train: TrainSpec, *, steps: int = 3, warmup: int = 2,
                 weights=None, force: bool = False, env=None, dist=None, cuda=None, measure=None):
    """This rank's memory under torchrun on ``train.num_gpus`` GPUs (NCCL): the CUDA protocol
    (:func:`probes.cuda.measure`) on the model wrapped as :func:`trace` wraps it. Returns
    (Measurement, DeviceInfo, rank). ``dist``, ``cuda`` and ``measure`` are passed in by tests."""
    import functools

    if dist is None:
        import torch.distributed as dist
    if cuda is None:
        cuda = torch.cuda
    if measure is None:
        from .cuda import measure
    check_traceable(train, train.sharding)
    rank, local_rank = torchrun_ranks(train.num_gpus, env)
    cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl")
    wrap = functools.partial(_wrap_cuda, train.sharding)
    if train.sharding == "ddp":
        warmup = max(warmup, DDP_WARMUP)
    m, info = measure(spec, train, steps=steps, warmup=warmup, weights=weights, force=force, wrap=wrap)
    return m, info, rank


def _wrap_cuda(sharding: str, model: torch.nn.Module) -> torch.nn.Module:
    return shard_fsdp(model, "cuda") if sharding == "fsdp" else wrap_ddp(model)[0]
