"""How long one training step takes: FLOPs and bytes moved per named term, and a roofline.

Each function below is one term of a step: the FLOPs and bytes of its kernels, with the
formula and where it comes from. :func:`step_time` sums the terms' roofline times
(:mod:`planner.time.roofline`) into ``step_seconds``, ``tokens_per_second`` and ``mfu``.

Notation as in :mod:`planner.memory.terms`: T = batch * seq tokens, b = batch, s = seq,
h = hidden size, V = vocabulary, L = decoder layers, r = LoRA rank, c = bytes of the
compute dtype, n = in * out elements of a Linear weight. A matmul of an (m x k) by a
(k x n) matrix is 2*m*k*n FLOPs. A mixture of experts counts the top-k experts each token
runs through (FLOPs), and reads every expert's weights (bytes).

Terms (keys):

- ``forward/matmul``: the base Linears and lm_head, 2*T*n each (Kaplan et al. 2020, 2*N
  FLOPs per token forward).
- ``backward/input_grad``: dX = dY @ W, 2*T*n per Linear: every Linear, frozen or not,
  passes the gradient to its input (the adapters below it need it).
- ``backward/weight_grad``: dW = dY^T @ X, 2*T*n, for trainable weights only: full
  fine-tuning; none for a frozen base. Together 6*N*T for full, 4*N*T for a frozen base
  (Kaplan et al. 2020; Hu et al. 2021: LoRA needs no gradients of the frozen weights).
- ``adapters/matmul``: LoRA's A and B, 2*T*r*(in + out) forward, twice that backward
  (input and weight gradients), as small matmuls.
- ``adapters/elementwise``: peft casts the input to fp32 (the adapter dtype) and autocast
  back, scales and adds the output: T*in*(hidden + 8 + c) + 5*T*out*c bytes forward, the
  same backward.
- ``attention/core``: flash / SDPA: 2*b*s^2*q_dim forward (causal: half of QK^T and AV
  skipped), 2.5x that backward (Dao 2023: five matmuls backward against two forward);
  eager: 4*b*s^2*q_dim forward, twice backward, at matmul speed, plus its seq x seq tensors
  written and read, b*heads*s^2*(6c + 8) bytes forward, twice backward.
- ``elementwise/layers``: HF's unfused RMSNorm (fp32 upcast: size*(4c + 28) bytes per norm),
  rotary (9 accesses of q and k), the gated activation (5*T*I) and the two residual adds
  (6*T*h), forward; twice that backward.
- ``loss/cross_entropy``: logits upcast to fp32 and log-softmax, T*V*(c + 16) forward,
  T*V*(c + 12) backward.
- ``recompute/forward``: under gradient checkpointing, each decoder layer's forward terms
  again (Chen et al. 2016; lm_head and the loss are not checkpointed).
- ``dora/weight_norm``: every forward, per adapted Linear, peft's DoRA builds the dense
  W + s*B@A (through an identity matrix: 2*r*in*(in + out) FLOPs) and its row norms:
  in*in*(4 + c) + in*out*(c + 28) bytes (the weight cast to fp32, B@A, the scaled sum, the
  norm; QDoRA dequantizes the weight once more) (Liu et al. 2024; peft's DoraLinearLayer),
  plus its magnitude scaling of the outputs, 4*T*out*c bytes forward and backward.
- ``dora/dropout_matmul``: with lora_dropout > 0, peft's DoRA runs the base matmul again on
  the dropped input, 2*T*n forward and 2*T*n for its input gradient.
- ``qlora/dequant``: bitsandbytes dequantizes each 4-bit weight to 16 bits before its
  matmul, in forward and again in backward: the codes and the absmax blocks read
  (n*(0.5 + 1/64) bytes with double quantization, n*(0.5 + 4/64) without), n*c written,
  per pass (Dettmers et al. 2023, QLoRA;
  bitsandbytes MatMul4Bit), and casts the fp32 hidden stream to and from the compute dtype,
  T*(in + out)*(4 + c) bytes per pass.
- ``optimizer/step``: AdamW reads and writes parameters, gradients and two states:
  torch's foreach path makes 8 passes (4p + 2g + 14s bytes per parameter), the fused
  kernel one (2p + g + 4s); 8-bit states s = 1; SGD 2p + g. fp16's GradScaler unscales
  and checks the gradients (3g).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.memory.terms import Precision, precision, uses_eager
from planner.memory.variants import variant
from planner.model import inventory as inv
from planner.model import targets
from planner.model.precision import scheme
from planner.model.specs import GpuSpec, ModelSpec, TrainSpec
from planner.time import roofline as R
from planner.time.roofline import Work
from planner.units import FP32

TERMS = ("forward/matmul", "backward/input_grad", "backward/weight_grad", "adapters/matmul",
         "adapters/elementwise", "attention/core", "elementwise/layers", "loss/cross_entropy",
         "recompute/forward", "dora/weight_norm", "dora/dropout_matmul", "qlora/dequant", "optimizer/step")
# eager PyTorch ops per decoder layer forward (HF Llama layout: two unfused RMSNorms of 7
# ops, 7 projections, rotary 10, attention 2, activation 2, residual adds 2, views and casts
# about 10); backward about twice; each adapted Linear adds 8 (cast, autocast casts, A, B,
# scale, add), dropout 2, DoRA's weight norm and scaling 15, a 4-bit Linear 3 (dequantize,
# casts).
# (an adapter's and a 4-bit weight's ops are their variants': planner.memory.variants)
OPS_LAYER, OPS_MOE, OPS_HEAD = 40, 20, 10


def _linears(model: ModelSpec):
    return model.layer.linears


def base_matmuls(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """forward/matmul, backward/input_grad, backward/weight_grad of the base Linears, the
    experts and lm_head (module docstring). Bytes: the weight (c per element: a 16-bit
    copy, dequantized or autocast) and the input and output activations."""
    t, c, L = train.tokens, prec.compute, model.num_layers
    shapes = [(lin.in_features, lin.out_features, 1) for lin in _linears(model)]
    moe = model.layer.moe
    if moe is not None:  # router, then the top-k experts' gate_up and down per token
        h, i = model.hidden_size, moe.intermediate
        shapes += [(h, moe.experts, 1), (h, 2 * i, moe.top_k), (i, h, moe.top_k)]
    full = train.method == "full"
    out: list[Work] = []
    for fan_in, fan_out, k in shapes:
        weights = fan_in * fan_out * (moe.experts if k > 1 else 1)
        flops = L * 2 * t * k * fan_in * fan_out
        nbytes = L * (weights * c + t * k * (fan_in + fan_out) * c)
        out.append(Work("forward/matmul", flops, nbytes, R.MATMUL, layer=True))
        out.append(Work("backward/input_grad", flops, nbytes, R.MATMUL))
        if full:
            out.append(Work("backward/weight_grad", flops, nbytes + L * weights * (prec.weight - c), R.MATMUL))
    h, v = model.hidden_size, model.vocab_size
    head = 2 * t * h * v, h * v * c + t * (h + v) * c
    out.append(Work("forward/matmul", *head, R.MATMUL))
    out.append(Work("backward/input_grad", *head, R.MATMUL))
    if targets.trains_lm_head(train):  # full fine-tuning, or lm_head in modules_to_save
        out.append(Work("backward/weight_grad", *head, R.MATMUL))
    return out


def adapter_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """Each adapted Linear's work, as its adapter kind owns it (adapters/matmul,
    adapters/elementwise, DoRA's dora/weight_norm and dora/dropout_matmul:
    planner.memory.variants), and LoRA on fused expert parameters (peft's ParamWrapper merges
    W + B@A each forward, 2*r*E*in*out FLOPs)."""
    method = variant(train)
    c, L = prec.compute, model.num_layers
    out: list[Work] = []
    for lin in targets.targeted_linears(model, train.target_modules):
        out += method.adapter.work(lin, train, prec, L, method.base)
    for p in targets.targeted_parameters(model, train):
        merged = p.weight
        out.append(Work("adapters/matmul", L * 2 * p.rank * merged, L * merged * 3 * c, R.SMALL_MATMUL, True, p.rank))
        out.append(Work("adapters/matmul", L * 4 * p.rank * merged, L * merged * 6 * c, R.SMALL_MATMUL,
                        narrow=p.rank))
    return out


def _attended_pairs(model: ModelSpec, train: TrainSpec) -> float:
    """Causal (query, key) pairs per sequence summed over layers: s^2/2 for a full layer,
    about s*w - w^2/2 for a layer attending within a sliding window w < s."""
    s = train.seq_len
    pairs = 0.0
    for kind in model.kinds:
        w = kind.layer.traits.sliding_window
        pairs += kind.count * (s * w - w * w / 2 if w and w < s else s * s / 2)
    return pairs


def attention_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """attention/core (module docstring)."""
    b, s, c, L = train.batch_size, train.seq_len, prec.compute, model.num_layers
    qd, kvd, t = model.q_dim, model.kv_dim, train.tokens
    io = L * t * (2 * qd + 2 * kvd) * c
    if not uses_eager(model, train):
        fwd = 4 * b * _attended_pairs(model, train) * qd  # = 2*b*s^2*q_dim per full layer
        return [Work("attention/core", fwd, io, R.ATTENTION, layer=True),
                Work("attention/core", 2.5 * fwd, 2 * io, R.ATTENTION)]
    fwd = L * 4 * b * s * s * qd
    scores = L * b * model.num_heads * s * s * (6 * c + 2 * FP32)
    return [Work("attention/core", fwd, io, R.MATMUL, layer=True),
            Work("attention/core", 0, scores, R.MEMORY, layer=True),
            Work("attention/core", 2 * fwd, 2 * io, R.MATMUL),
            Work("attention/core", 0, 2 * scores, R.MEMORY)]


def elementwise_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """elementwise/layers and loss/cross_entropy (module docstring)."""
    t, c, L = train.tokens, prec.compute, model.num_layers
    h, hid, stream = model.hidden_size, prec.hidden, prec.stream
    heads = {"q": model.num_heads, "k": model.num_kv_heads}
    norms = sum(t * n.size * (heads.get(n.site, 1) if n.per_head else 1) for n in model.layer.norms)
    norm_bytes = norms * (4 * stream + 28)
    rope = t * (model.q_dim + model.kv_dim) * model.traits.rotary_fraction * 9 * hid
    moe = model.layer.moe
    inter = (moe.top_k * moe.intermediate) if moe is not None else model.intermediate_size
    act = 5 * t * inter * hid
    residual = 6 * t * h * stream
    per_layer = norm_bytes + rope + act + residual
    final_norm = t * h * (4 * stream + 28)
    v = model.vocab_size
    return [Work("elementwise/layers", 0, L * per_layer, R.MEMORY, layer=True),
            Work("elementwise/layers", 0, 2 * L * per_layer + 3 * final_norm, R.MEMORY),
            Work("loss/cross_entropy", 0, t * v * (c + 16) + t * v * (c + 12), R.MEMORY)]


def dequant_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """The base treatment's work beside each matmul (qlora/dequant for 4-bit weights)."""
    base = variant(train).base
    return [w for lin in _linears(model) for w in base.work(lin, train, prec, model.num_layers)]


def optimizer_work(model: ModelSpec, train: TrainSpec, prec: Precision, grad_scaler: bool) -> list[Work]:
    """optimizer/step (module docstring), over the trained tensors of the inventory, each in
    its own dtype p (fp32 adapters, modules_to_save copies in the weight dtype)."""
    moved = 0
    for tensor in inv.trained(inv.inventory(model, train, prec.weight)):
        p = tensor.dtype_bytes
        s = 1 if train.optim in ("adamw_8bit", "paged_adamw_8bit") else p
        if train.optim == "sgd":
            per = 2 * p + p
        elif train.optim == "adamw_torch":
            per = 4 * p + 2 * p + 14 * s
        else:
            per = 2 * p + p + 4 * s
        if grad_scaler:
            per += 3 * p
        moved += tensor.elements * per
    return [Work("optimizer/step", 0, moved, R.MEMORY)]


def dispatched_ops(model: ModelSpec, train: TrainSpec) -> int:
    """Eager ops one step launches (see OPS_*): forward, backward (2x), the recomputed
    forward under checkpointing, and the optimizer's foreach kernels (about 10)."""
    method = variant(train)
    adapted = len(targets.targeted_linears(model, train.target_modules))
    layer = (OPS_LAYER + (OPS_MOE if model.layer.moe is not None else 0) + adapted * method.adapter.ops(train)
             + method.base.ops * len(_linears(model)))
    passes = 3 + (1 if train.gradient_checkpointing else 0)
    return model.num_layers * layer * passes + 3 * OPS_HEAD + 10


@dataclass(frozen=True)
class StepTime:
    """The planned time of one step on one GPU.

    ``terms``: key -> {"flops", "bytes", "seconds"} (GPU time of that term);
    ``gpu_seconds``: their sum; ``dispatch_seconds``: the host's launch time of the step's
    eager ops; ``step_seconds``: the larger of the two (the GPU hides dispatch behind
    longer kernels, and waits for it otherwise); ``model_flops``: the step's FLOPs without
    recomputation and DoRA's extra work (what MFU counts); ``mfu``: model_flops /
    (step_seconds * dense 16-bit peak).
    """

    step_seconds: float
    tokens_per_second: float
    mfu: float
    gpu_seconds: float
    dispatch_seconds: float
    model_flops: float
    bound: str  # "compute", "memory" or "dispatch": what the largest share of the step waits on
    terms: dict = field(hash=False)


def deltanet_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """``deltanet/core``: a Gated DeltaNet layer's conv1d and chunked delta rule (Yang et al. 2024,
    "Gated Delta Networks", the chunkwise form), per layer of that kind, H value heads, dk / dv
    their widths, C = 64 positions a chunk, D the conv's channels, K its taps:

    - forward 2*T*D*K (the depthwise conv) + T*H*(4*C*dk + 2*C*dv + 6*dk*dv): within a chunk
      K K^T and Q K^T (2*C*dk each) and the attention times the new values (2*C*dv); across
      chunks the state read twice and its update (2*dk*dv each); backward twice that;
    - bytes: the fused kernels read q, k, v, g, beta and write the output, T*(2*D + H*(8 + c))
      forward, twice backward; the torch path moves its saved set (planner.memory.deltanet) as
      well, written forward and read backward, at matmul speed for its small batched matmuls.
    (Part of the step's work only for the kinds with a DeltaNet; attention_work counts the
    others'.)"""
    from planner.memory import deltanet

    out = []
    for view in model.by_kind():
        net = view.layer.deltanet
        if net is None:
            continue
        n, t, c = view.num_layers, train.tokens, prec.compute
        flops = n * (2 * t * net.conv_dim * net.conv_kernel
                     + t * net.value_heads * (4 * deltanet.CHUNK * net.key_dim + 2 * deltanet.CHUNK * net.value_dim
                                              + 6 * net.key_dim * net.value_dim))
        nbytes = n * t * (2 * net.conv_dim + net.value_heads * (8 + c))
        if deltanet.kernels(model, train) == "torch":
            nbytes += n * deltanet.torch_saved(view, train, prec)
        kind = R.MATMUL if deltanet.kernels(model, train) == "torch" else R.ATTENTION
        out += [Work("deltanet/core", flops, nbytes, kind, layer=True), Work("deltanet/core", 2 * flops, 2 * nbytes, kind)]
    return out


def work(model: ModelSpec, train: TrainSpec, dtype: str) -> list[Work]:
    """Every piece of work of one step, recomputation included."""
    prec = precision(train, dtype)
    pieces = (base_matmuls(model, train, prec) + adapter_work(model, train, prec)
              + attention_work(model, train, prec) + elementwise_work(model, train, prec)
              + dequant_work(model, train, prec) + deltanet_work(model, train, prec)
              + optimizer_work(model, train, prec, scheme(train, dtype).grad_scaler))
    if train.gradient_checkpointing:
        pieces += [Work("recompute/forward", w.flops, w.nbytes, w.kind, narrow=w.narrow)
                   for w in pieces if w.layer]
    return pieces


def step_time(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, dtype: str,
              eff: R.Efficiency = R.DEFAULT) -> StepTime | None:
    """The roofline time of one step of ``train`` (resolved compute dtype ``dtype``) on
    ``gpu``; None for an fp32 compute dtype (the catalog has 16-bit peaks only)."""
    if dtype == "fp32":
        return None
    pieces = work(model, train, dtype)
    terms: dict[str, dict] = {}
    compute_s = memory_s = 0.0
    for w in pieces:
        sec = R.seconds(w.flops, w.nbytes, w.kind, gpu, eff, w.narrow)
        entry = terms.setdefault(w.term, {"flops": 0.0, "bytes": 0.0, "seconds": 0.0})
        entry["flops"] += w.flops
        entry["bytes"] += w.nbytes
        entry["seconds"] += sec
        by_flops = R.seconds(w.flops, 0, w.kind, gpu, eff, w.narrow)
        compute_s, memory_s = (compute_s + sec, memory_s) if by_flops >= sec else (compute_s, memory_s + sec)
    gpu_s = sum(e["seconds"] for e in terms.values())
    dispatch_s = dispatched_ops(model, train) * eff.dispatch_seconds
    step = max(gpu_s, dispatch_s)
    model_flops = sum(w.flops for w in pieces
                      if w.term not in ("recompute/forward", "dora/weight_norm", "dora/dropout_matmul"))
    bound = "dispatch" if dispatch_s > gpu_s else ("compute" if compute_s >= memory_s else "memory")
    ordered = {k: terms[k] for k in TERMS if k in terms}
    return StepTime(step_seconds=step, tokens_per_second=train.tokens / step,
                    mfu=model_flops / (step * gpu.tflops_dense_16bit * 1e12), gpu_seconds=gpu_s,
                    dispatch_seconds=dispatch_s, model_flops=model_flops, bound=bound, terms=ordered)


def total_hours(step: StepTime, train: TrainSpec, dataset_tokens: int, epochs: int = 1) -> float:
    """Hours to train ``epochs`` passes over ``dataset_tokens`` tokens: the steps
    (ceil(tokens * epochs / tokens per step)) times the step time. With several GPUs a step
    takes num_gpus per-GPU batches at once (data parallelism; the collectives' time is not
    modelled)."""
    if dataset_tokens < 1:
        raise ValueError(f"dataset tokens must be at least 1, got {dataset_tokens}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    steps = math.ceil(dataset_tokens * epochs / (train.tokens * train.num_gpus))
    return steps * step.step_seconds / 3600


def iteration_seconds(step: StepTime, accumulation: int = 1) -> float:
    """Seconds of one optimizer iteration over ``accumulation`` micro-batches: every
    micro-batch's forward and backward, one optimizer step (gradient accumulation)."""
    if accumulation < 1:
        raise ValueError(f"gradient accumulation must be at least 1, got {accumulation}")
    optimizer = step.terms.get("optimizer/step", {}).get("seconds", 0.0)
    return accumulation * (step.step_seconds - optimizer) + optimizer
