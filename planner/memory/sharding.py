"""Several GPUs: what one data-parallel rank holds, per memory term (integer bytes).

``train.num_gpus`` ranks each run ``train.batch_size`` sequences (the per-GPU batch), so the
activations are the single-GPU plan's at that batch; what changes is the model state and
the buffers of the sharding (``train.sharding``):

- ``ddp``: torch DistributedDataParallel: every rank holds the whole model, gradients and
  optimizer states, plus gradient buckets (:func:`ddp_grad_buckets`).
- ``fsdp``: FSDP2 ``fully_shard`` on each decoder layer and the root: parameters, gradients and
  optimizer states in 1/N shards (:func:`shard`), a layer's parameters all-gathered while it
  runs (:func:`unsharded_layer`), the root's (embedding, final norm, lm_head) from forward to
  the end of backward (:func:`unsharded_root`), the all-gather buffer (:func:`fsdp_prefetch`)
  and the reduce-scatter of a layer's gradients (:func:`fsdp_reduce_scatter`).
- ``zero2`` / ``zero3``: DeepSpeed ZeRO (Rajbhandari et al. 2020), from DeepSpeed's defaults:
  formulas, not traced (DeepSpeed is not a dependency): :func:`zero_model_states`.

The DDP and FSDP terms are checked against rank 0 traced with torch's fake process group
(``probe --device fake --num-gpus N --sharding ...``), itself equal to the byte to rank 0 of
a real gloo run (tests). How they enter the phases is :func:`planner.memory.moments.step_memory`.
"""
from __future__ import annotations

from dataclasses import dataclass

from planner.memory.variants import variant
from planner.model import counts
from planner.model import inventory as inv
from planner.model.inventory import Tensor
from planner.model.specs import ModelSpec, TrainSpec
from planner.units import FP32
# DeepSpeed defaults (deepspeed.runtime.zero.config): reduce_bucket_size 5e8 elements,
# stage3_prefetch_bucket_size 5e7 elements, stage3_max_live_parameters 1e9.
ZERO_REDUCE_BUCKET = 500_000_000
ZERO3_PREFETCH_BUCKET = 50_000_000
ZERO_MASTER_AND_ADAM = 12  # fp32 master weight + Adam's two fp32 moments, per trainable parameter
ZERO_FP32_GRAD = 4  # the fp32 gradient partition the optimizer step reads


def shard(rows: int, numel: int, num_gpus: int) -> int:
    """Elements of rank 0's shard of a tensor of ``rows`` x (numel / rows): FSDP2 chunks dim 0
    (torch.chunk: ceil(rows / N) rows on rank 0) and pads every shard to that size
    (torch.distributed.fsdp._fully_shard._fsdp_param, FSDPParam._init_sharded_param)."""
    return -(-rows // num_gpus) * (numel // rows)


def _layer(tensors, kind: str | None) -> tuple[Tensor, ...]:
    """One layer's tensors: of the layer kind ``kind``, or of the largest kind (None)."""
    return inv.of_kind(tensors, kind) if kind is not None else inv.one_layer(tensors)


def base_tensors(model: ModelSpec, layer_only: bool = False, kind: str | None = None) -> tuple[Tensor, ...]:
    """The base model's parameters (planner.model.inventory); one decoder layer's with
    ``layer_only`` (of the layer kind ``kind``, else of the largest)."""
    tensors = inv.base_tensors(model)
    return _layer(tensors, kind) if layer_only else tensors


def adapter_tensors(model: ModelSpec, train: TrainSpec, layer_only: bool = False,
                    kind: str | None = None) -> tuple[Tensor, ...]:
    """peft's adapter tensors of ``train`` (planner.model.inventory); one decoder layer's with
    ``layer_only`` (of the layer kind ``kind``, else of the largest)."""
    tensors = tuple(t for t in inv.inventory(model, train, FP32) if t.treatment == "adapter")
    return _layer(tensors, kind) if layer_only else tensors


def trainable_tensors(model: ModelSpec, train: TrainSpec, layer_only: bool = False,
                      kind: str | None = None) -> tuple[Tensor, ...]:
    """The tensors that train (planner.model.inventory); one decoder layer's with ``layer_only``
    (of the layer kind ``kind``, else of the largest)."""
    tensors = inv.trained(inv.inventory(model, train, FP32))
    return _layer(tensors, kind) if layer_only else tensors


def sharded(tensors, num_gpus: int) -> int:
    """Elements rank 0 holds of ``tensors``, each sharded on its own (:func:`shard`)."""
    return sum(t.layers * shard(t.rows, t.numel, num_gpus) for t in tensors)


def elements(tensors) -> int:
    return sum(t.elements for t in tensors)


def shard_fraction_bytes(total_bytes: int, tensors, num_gpus: int) -> int:
    """``total_bytes`` of a whole set of tensors scaled to rank 0's padded shards of them (exact
    when every tensor has one dtype)."""
    whole = elements(tensors)
    return 0 if not whole else total_bytes * sharded(tensors, num_gpus) // whole


def unsharded_root(model: ModelSpec, train: TrainSpec, weight_bytes: int) -> int:
    """FSDP: the root unit's parameters all-gathered whole, the embedding, final norm and
    lm_head ((2 or 1) * V*h + h, in their stored dtype: fp32 under QLoRA's
    prepare_model_for_kbit_training), live from the start of forward to the end of backward:
    FSDP2 does not reshard the root after forward (tracer: [V, h] embedding and lm_head and the
    final norm unsharded through backward, 262,400 bytes on the tiny Llama, at any N). Every other
    parameter outside the layers belongs to the root too (Gemma 4's per-layer input embedding,
    projection and norm: the inventory's root tensors; their whole count, in that dtype)."""
    root = counts.embedding_params(model) + counts.lm_head_params(model) + model.hidden_size
    root += sum(t.elements for t in inv.base_tensors(model)
                if t.kind == inv.ROOT and t.role not in ("embedding", "lm_head", "final_norm"))
    return root * variant(train).base.parameter_bytes(weight_bytes)


def layer_bytes(model: ModelSpec, train: TrainSpec, weight_bytes: int, kind: str | None = None) -> int:
    """One decoder layer's parameters, whole, of the layer kind ``kind`` (None: the largest
    kind's): base (a 4-bit base's Linear weights packed, :func:`planner.memory.terms.
    quantized_weight_bytes` each, its other parameters fp32; else the stored dtype) and
    adapters (fp32). Kinds whose Linears differ (a dense first layer before the MoE layers)
    all-gather different sizes."""
    from planner.memory.terms import quantized_weight_bytes

    layer = base_tensors(model, layer_only=True, kind=kind)
    base = sum(t.numel for t in layer)
    if variant(train).base.quantized:
        linear = [t.numel for t in layer if t.role == "linear"]
        base_bytes = sum(quantized_weight_bytes(n) for n in linear) + (base - sum(linear)) * FP32
    else:
        base_bytes = base * weight_bytes
    return base_bytes + elements(adapter_tensors(model, train, layer_only=True, kind=kind)) * FP32


def _layer_params(model: ModelSpec, train: TrainSpec) -> int:
    return (sum(t.numel for t in base_tensors(model, layer_only=True))
            + elements(adapter_tensors(model, train, layer_only=True)))


def fsdp_layer_grads(model: ModelSpec, train: TrainSpec, grad_bytes: int, kind: str | None = None) -> int:
    """FSDP: one layer's unsharded gradients (of the layer kind ``kind``, else of the largest),
    before their reduce-scatter (part of :meth:`FSDP.terms`' reduce_scatter)."""
    return elements(trainable_tensors(model, train, layer_only=True, kind=kind)) * grad_bytes


def fsdp_root_grads(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP, full fine-tuning: lm_head's (or the tied embedding's) and the final norm's
    unsharded gradients, reduced last, with the root (part of :func:`fsdp_reduce_scatter`).
    With a tied embedding they are still there when the embedding's backward runs, after the
    first layer's (tracer, Llama-3.2-1B 2 layers, 8 GPUs: lm_head's [V, h] gradient beside the
    embedding's and their sum, no layer unsharded then)."""
    if not variant(train).adapter.trains_base:
        return 0
    return ((counts.lm_head_params(model) or counts.embedding_params(model)) + model.hidden_size) * grad_bytes


def fsdp_layer_shards(model: ModelSpec, train: TrainSpec, grad_bytes: int, indices) -> int:
    """FSDP: the gradient shards rank 0 holds of the decoder layers ``indices`` once their
    reduce-scatters are done (each layer's tensors of its kind)."""
    trainable = trainable_tensors(model, train)
    kind_of = {i: k.name for k in model.kinds for i in k.indices}
    return sum(sharded(inv.of_kind(trainable, kind_of[i]), train.num_gpus) for i in indices) * grad_bytes


def fsdp_grads_at_backward_end(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP: the sharded gradients already there while the first layer's backward runs: every
    other layer's shard (the root's and the first layer's are still whole: :meth:`FSDP.terms`' reduce_scatter)."""
    first = next(k.name for k in model.kinds if 0 in k.indices)  # the first layer's kind
    first_layer = sharded(inv.of_kind(trainable_tensors(model, train), first), train.num_gpus)
    return fsdp_grads_after_layers(model, train, grad_bytes) - first_layer * grad_bytes


def fsdp_grads_after_layers(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP: the sharded gradients there once every decoder layer's backward is done, while the
    root's backward (the input embedding's) still runs: every layer's shard, the first layer's
    included (its reduce-scatter ran when its backward ended); the root's are still whole
    (:func:`fsdp_root_grads`). Tracer, Phi-4-mini full fine-tuning, 2 layers, 2 GPUs, tied
    embedding: at the embedding's backward both layers' [50334720] bf16 gradient shards are
    live beside lm_head's [200064, 3072] gradient, the embedding's and their sum."""
    # every layer of every kind (dense and MoE layers' tensors differ)
    layers = tuple(t for t in trainable_tensors(model, train) if t.kind != inv.ROOT)
    return sharded(layers, train.num_gpus) * grad_bytes


def ddp_grad_buckets(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """DDP's gradient buckets: every trainable parameter's gradient is copied into a flat
    bucket (bucket_cap_mb=25 each, the first 1 MiB) that is all-reduced in place; with
    DDP's default gradient_as_bucket_view=False the buckets hold a second copy of all the
    gradients, allocated when DDP is built and kept (torch DistributedDataParallel; tracer:
    ``ddp/buckets`` equal to the gradients' bytes, whatever the bucket size). The bucket size
    changes how many buckets, not their total."""
    return counts.trainable_params(model, train) * grad_bytes


def zero_model_states(model: ModelSpec, train: TrainSpec, base_bytes: int, compute_bytes: int = 2
                      ) -> dict[str, int]:
    """DeepSpeed ZeRO's model states per GPU (bf16 / fp16 training with its fp32 optimizer), P
    parameters (T trainable), N GPUs, c bytes of the compute dtype; ``base_bytes``: the frozen
    or trainable base weights as one GPU holds them (4-bit packed for QLoRA; else P*c, as
    DeepSpeed casts the whole module, adapters included, to the compute dtype):

    - parameters: the base weights and the adapters (T*c) whole (ZeRO-2), or 1/N of them
      (ZeRO-3: partitioned; 0 with ``offload_param``);
    - gradients partitioned: T*c/N;
    - fp32 master weights and Adam's two moments: 12*T/N (both stages partition them);
    - the fp32 gradient partition the optimizer step reads: 4*T/N (the transient).
    Offloading the optimizer (``offload_optimizer``) moves the last two to the CPU.
    Rajbhandari et al. 2020 (ZeRO), section 5.1 (2 + 2 + 12 bytes per parameter in mixed
    precision). DeepSpeed's own estimators count model states only, every parameter trainable:
    estimate_zero2_model_states_mem_needs 4P + 16P/N (a full 16-bit gradient on every GPU) and
    estimate_zero3_model_states_mem_needs 4 x largest layer + 18P/N;
    tests/planner/test_sharding.py compares them with these terms."""
    n, t = train.num_gpus, counts.trainable_params(model, train)
    offload_optim = train.offload != "none"
    adapters = counts.adapter_params(model, train) * compute_bytes
    if train.sharding == "zero3":
        base_bytes, adapters = ((0, 0) if train.offload == "params"
                                else (-(-base_bytes // n), -(-adapters // n)))
    return {
        "weights/base": base_bytes,
        "adapters/params": adapters,
        "grads": -(-t * compute_bytes // n),
        "optimizer/states": 0 if offload_optim else -(-t * ZERO_MASTER_AND_ADAM // n),
        "optimizer/transient": 0 if offload_optim else -(-t * ZERO_FP32_GRAD // n),
    }


def fsdp_offloaded(train: TrainSpec) -> bool:
    """FSDP2's CPUOffloadPolicy (``--offload params``): sharded parameters, gradients and the
    optimizer step live on the CPU; a layer is copied to the GPU to be all-gathered."""
    return train.sharding == "fsdp" and train.offload == "params"


# ---------------------------------------------------------------- the strategies

# The parallel terms a strategy can hold, by name (planner.memory.moments says which are live
# at which moment): the root unit all-gathered, the running layer all-gathered, the all-gather
# buffer or prefetch bucket, the gradients not yet reduced (a layer's and, full fine-tuning
# under FSDP, the root's), DDP's buckets.
TERMS = ("unsharded_root", "unsharded_layer", "prefetch", "reduce_scatter", "root_grads", "grad_buckets")


@dataclass(frozen=True)
class RankState:
    """What one rank holds for the whole step: the persistent terms (by component name, as
    planner.memory.moments writes them), the gradients at the optimizer step and at the end of
    backward, the optimizer's temporaries."""

    persistent: dict[str, int]
    grads: int
    end_grads: int
    opt_transient: int


@dataclass(frozen=True)
class Strategy:
    """One GPU: the whole model state, no collective buffers."""

    name: str = "none"
    whole_gradients: bool = True  # every gradient whole on the rank while backward runs

    def rank_state(self, model: ModelSpec, train: TrainSpec, prec, state: RankState) -> RankState:
        return state

    def terms(self, model: ModelSpec, train: TrainSpec, prec, kind: str | None = None) -> dict[str, int]:
        """The parallel terms' sizes (one each; :data:`TERMS`), those of a layer (the layer
        all-gathered, its buffer, its gradients not yet reduced) for a layer of the kind ``kind``
        (None: the largest kind's)."""
        return dict.fromkeys(TERMS, 0)

    def grads_at_embedding(self, model: ModelSpec, train: TrainSpec, prec, end_grads: int) -> int:
        """The gradients there while the input embedding's backward runs, after every layer's."""
        return end_grads


def grad_bytes(train: TrainSpec, prec) -> int:
    """Bytes of one trained parameter's gradient (the adapters' fp32, or the trained weights' dtype)."""
    return variant(train).adapter.trained_bytes(prec.weight)


@dataclass(frozen=True)
class DDP(Strategy):
    """torch DistributedDataParallel: the whole model state on every rank, and its gradient
    buckets (:func:`ddp_grad_buckets`)."""

    name: str = "ddp"

    def terms(self, model, train, prec, kind=None):
        return dict(super().terms(model, train, prec),
                    grad_buckets=ddp_grad_buckets(model, train, grad_bytes(train, prec)))


@dataclass(frozen=True)
class FSDP(Strategy):
    """FSDP2 ``fully_shard`` on each decoder layer and the root: parameters, gradients and
    optimizer states in rank 0's padded shards (:func:`shard`), or on the CPU with
    ``--offload params``; the root and the running layer all-gathered, the all-gather buffer,
    the gradients not yet reduce-scattered."""

    name: str = "fsdp"
    whole_gradients: bool = False

    def rank_state(self, model, train, prec, state):
        n, offloaded = train.num_gpus, fsdp_offloaded(train)
        trainable = trainable_tensors(model, train)
        persistent = dict(state.persistent)
        for key, tensors in (("weights__base", base_tensors(model)), ("adapters__params", adapter_tensors(model, train)),
                             ("optimizer__states", trainable)):
            persistent[key] = 0 if offloaded else shard_fraction_bytes(persistent[key], tensors, n)
        if offloaded:
            return RankState(persistent, 0, 0, 0)
        return RankState(persistent, shard_fraction_bytes(state.grads, trainable, n),
                         fsdp_grads_at_backward_end(model, train, grad_bytes(train, prec)),
                         shard_fraction_bytes(state.opt_transient, trainable, n))

    def terms(self, model, train, prec, kind=None):
        """The root (:func:`unsharded_root`) and one layer of ``kind`` (:func:`layer_bytes`) all-gathered;
        the all-gather output buffer, about one layer (N times its padded shard): FSDP2 keeps the
        last all-gather's buffer until the next copy-out, so one is still there at the loss, and
        backward prefetches the next layer's (tracer: one layer-sized ``empty`` buffer at the loss
        and at the start of backward); the gradients not yet reduce-scattered at the end of
        backward: the first layer's, whole, and the root's (:func:`fsdp_root_grads`; FSDP2
        reduce-scatters a unit's gradients once its backward is done, the root last:
        torch.distributed.fsdp._fully_shard._fsdp_collectives, foreach_reduce; tracer, tiny
        Llama full, checkpointing: layer 0's weight gradients and lm_head's [V, h] gradient
        unsharded, the other layers' gradients sharded)."""
        g = grad_bytes(train, prec)
        layer = layer_bytes(model, train, prec.weight, kind)
        root_grads = fsdp_root_grads(model, train, g)
        return dict(super().terms(model, train, prec), unsharded_root=unsharded_root(model, train, prec.weight),
                    unsharded_layer=layer, prefetch=layer,
                    reduce_scatter=fsdp_layer_grads(model, train, g, kind) + root_grads, root_grads=root_grads)

    def grads_at_embedding(self, model, train, prec, end_grads):
        """Every layer's shard, the first layer's too (:func:`fsdp_grads_after_layers`), unless
        the gradients live on the CPU."""
        if fsdp_offloaded(train):
            return end_grads
        return fsdp_grads_after_layers(model, train, grad_bytes(train, prec))


@dataclass(frozen=True)
class Zero(Strategy):
    """DeepSpeed ZeRO-2 / ZeRO-3 (Rajbhandari et al. 2020), from DeepSpeed's defaults
    (deepspeed.runtime.zero.config): the model states of :func:`zero_model_states`; ZeRO-3
    gathers each module's partitioned parameters as it runs (one layer, in the compute dtype,
    as DeepSpeed casts the module) with a prefetch bucket of min(stage3_prefetch_bucket_size
    5e7, one layer) elements; both reduce the gradients through a contiguous bucket of
    min(reduce_bucket_size 5e8, trainable) elements in the compute dtype (contiguous_gradients)."""

    name: str = "zero2"
    whole_gradients: bool = False
    stage: int = 2

    def rank_state(self, model, train, prec, state):
        quantized = variant(train).base.quantized
        base = state.persistent["weights__base"] if quantized else counts.total_params(model) * prec.compute
        states = zero_model_states(model, train, base, prec.compute)
        persistent = dict(state.persistent, weights__base=states["weights/base"],
                          adapters__params=states["adapters/params"], optimizer__states=states["optimizer/states"])
        return RankState(persistent, states["grads"], states["grads"], states["optimizer/transient"])

    def terms(self, model, train, prec, kind=None):
        """ZeRO-3's gathered layer and prefetch bucket: the largest kind's, whatever ``kind``
        (formulas, not traced)."""
        layer = _layer_params(model, train)
        gathered = layer * 2 if self.stage == 3 else 0
        prefetch = min(ZERO3_PREFETCH_BUCKET, layer) * 2 if self.stage == 3 else 0
        bucket = min(ZERO_REDUCE_BUCKET, counts.trainable_params(model, train)) * 2
        return dict(super().terms(model, train, prec), unsharded_layer=gathered, prefetch=prefetch,
                    reduce_scatter=bucket)


STRATEGIES = {"none": Strategy(), "ddp": DDP(), "fsdp": FSDP(), "zero2": Zero(), "zero3": Zero("zero3", stage=3)}


def strategy(train: TrainSpec) -> Strategy:
    """The strategy of ``train.sharding``."""
    return STRATEGIES[train.sharding]

