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

from planner.model import counts
from planner.memory.variants import variant
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


def base_tensors(model: ModelSpec, layer_only: bool = False) -> tuple[Tensor, ...]:
    """The base model's parameters (planner.model.inventory); one decoder layer's with ``layer_only``."""
    tensors = inv.base_tensors(model)
    return inv.one_layer(tensors) if layer_only else tensors


def adapter_tensors(model: ModelSpec, train: TrainSpec, layer_only: bool = False) -> tuple[Tensor, ...]:
    """peft's adapter tensors of ``train`` (planner.model.inventory); one decoder layer's with ``layer_only``."""
    tensors = tuple(t for t in inv.inventory(model, train, FP32) if t.treatment == "adapter")
    return inv.one_layer(tensors) if layer_only else tensors


def trainable_tensors(model: ModelSpec, train: TrainSpec, layer_only: bool = False) -> tuple[Tensor, ...]:
    """The tensors that train (planner.model.inventory); one decoder layer's with ``layer_only``."""
    tensors = inv.trained(inv.inventory(model, train, FP32))
    return inv.one_layer(tensors) if layer_only else tensors


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
    final norm unsharded through backward, 262,400 bytes on the tiny Llama, at any N)."""
    if train.sharding != "fsdp":
        return 0
    root = counts.embedding_params(model) + counts.lm_head_params(model) + model.hidden_size
    return root * variant(train).base.parameter_bytes(weight_bytes)


def layer_bytes(model: ModelSpec, train: TrainSpec, weight_bytes: int, packed: int) -> int:
    """One decoder layer's parameters, whole: base (``packed``: its 4-bit weights' bytes, else
    the stored dtype) and adapters (fp32)."""
    base = sum(t.numel for t in base_tensors(model, layer_only=True))
    linear = sum(lin.in_features * lin.out_features for lin in model.linears)
    if train.is_quantized:
        base_bytes = packed + (base - linear) * FP32
    else:
        base_bytes = base * weight_bytes
    return base_bytes + elements(adapter_tensors(model, train, layer_only=True)) * FP32


def unsharded_layer(model: ModelSpec, train: TrainSpec, weight_bytes: int, packed: int) -> int:
    """The parameters of the layer that runs, all-gathered: FSDP2 unshards a layer before its
    forward (and its backward) and frees it after (reshard_after_forward=True); ZeRO-3 gathers
    each module's partitioned parameters as it runs. One layer (:func:`layer_bytes`; ZeRO-3's
    in the compute dtype, as DeepSpeed casts the module)."""
    if train.sharding == "fsdp":
        return layer_bytes(model, train, weight_bytes, packed)
    if train.sharding == "zero3":
        return _layer_params(model, train) * 2
    return 0


def _layer_params(model: ModelSpec, train: TrainSpec) -> int:
    return (sum(t.numel for t in base_tensors(model, layer_only=True))
            + elements(adapter_tensors(model, train, layer_only=True)))


def fsdp_prefetch(model: ModelSpec, train: TrainSpec, weight_bytes: int, packed: int) -> int:
    """FSDP: the all-gather output buffer of one layer (N times its padded shard, about one
    layer), alive beside the unsharded parameters: FSDP2 keeps the last all-gather's buffer until
    the next copy-out, so one is still there at the loss, and backward prefetches the next
    layer's (tracer: one layer-sized ``empty`` buffer at the loss and at the start of backward).
    ZeRO-3: the prefetch bucket, min(stage3_prefetch_bucket_size 5e7, one layer) elements in the
    compute dtype (DeepSpeed's default)."""
    if train.sharding == "fsdp":
        return layer_bytes(model, train, weight_bytes, packed)
    if train.sharding == "zero3":
        return min(ZERO3_PREFETCH_BUCKET, _layer_params(model, train)) * 2
    return 0


def fsdp_reduce_scatter(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """Gradients not yet reduced while the first layer's backward runs (the end of backward):
    FSDP2 reduce-scatters a unit's gradients once its backward is done, so its own unsharded
    gradients (one layer's trainable parameters, whole) are in flight, and so are the root's
    (lm_head and the final norm, for full fine-tuning; the root is reduced last)
    (torch.distributed.fsdp._fully_shard._fsdp_collectives, foreach_reduce; tracer, tiny Llama
    full, checkpointing: layer 0's weight gradients and lm_head's [V, h] gradient unsharded,
    the other layers' gradients sharded). ZeRO-2 / ZeRO-3: the contiguous reduce bucket,
    min(reduce_bucket_size 5e8, trainable) elements in the compute dtype (DeepSpeed's default,
    contiguous_gradients)."""
    if train.sharding == "fsdp":
        return fsdp_layer_grads(model, train, grad_bytes) + fsdp_root_grads(model, train, grad_bytes)
    if train.sharding in ("zero2", "zero3"):
        return min(ZERO_REDUCE_BUCKET, counts.trainable_params(model, train)) * 2
    return 0


def fsdp_layer_grads(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP: one layer's unsharded gradients, before their reduce-scatter (part of
    :func:`fsdp_reduce_scatter`)."""
    return elements(trainable_tensors(model, train, layer_only=True)) * grad_bytes if train.sharding == "fsdp" else 0


def fsdp_root_grads(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP, full fine-tuning: lm_head's (or the tied embedding's) and the final norm's
    unsharded gradients, reduced last, with the root (part of :func:`fsdp_reduce_scatter`).
    With a tied embedding they are still there when the embedding's backward runs, after the
    first layer's (tracer, Llama-3.2-1B 2 layers, 8 GPUs: lm_head's [V, h] gradient beside the
    embedding's and their sum, no layer unsharded then)."""
    if train.sharding != "fsdp" or train.method != "full":
        return 0
    return ((counts.lm_head_params(model) or counts.embedding_params(model)) + model.hidden_size) * grad_bytes


def fsdp_grads_at_backward_end(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP: the sharded gradients already there while the first layer's backward runs: every
    other layer's shard (the root's and the first layer's are still whole,
    :func:`fsdp_reduce_scatter`)."""
    layer = sharded(trainable_tensors(model, train, layer_only=True), train.num_gpus)
    return (model.num_layers - 1) * layer * grad_bytes


def fsdp_grads_after_layers(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """FSDP: the sharded gradients there once every decoder layer's backward is done, while the
    root's backward (the input embedding's) still runs: every layer's shard, the first layer's
    included (its reduce-scatter ran when its backward ended); the root's are still whole
    (:func:`fsdp_root_grads`). Tracer, Phi-4-mini full fine-tuning, 2 layers, 2 GPUs, tied
    embedding: at the embedding's backward both layers' [50334720] bf16 gradient shards are
    live beside lm_head's [200064, 3072] gradient, the embedding's and their sum."""
    return model.num_layers * sharded(trainable_tensors(model, train, layer_only=True), train.num_gpus) * grad_bytes


def ddp_grad_buckets(model: ModelSpec, train: TrainSpec, grad_bytes: int) -> int:
    """DDP's gradient buckets: every trainable parameter's gradient is copied into a flat
    bucket (bucket_cap_mb=25 each, the first 1 MiB) that is all-reduced in place; with
    DDP's default gradient_as_bucket_view=False the buckets hold a second copy of all the
    gradients, allocated when DDP is built and kept (torch DistributedDataParallel; tracer:
    ``ddp/buckets`` equal to the gradients' bytes, whatever the bucket size). The bucket size
    changes how many buckets, not their total."""
    if train.sharding != "ddp":
        return 0
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
