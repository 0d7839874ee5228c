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
  written and read, b*heads*s^2*(6c + 8) bytes forward, twice backward. DeepSeek-V3.2's
  indexer adds its scoring forward only (:func:`_indexer_scoring`); its Linears have no backward.
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
- ``deltanet/core``: a Gated DeltaNet layer's conv and chunked delta rule (:func:`deltanet_work`).
- ``mixer/core``: a Mamba-2 layer's conv and chunked scan, an LFM2 short convolution's gates
  and conv (:func:`mixer_work`).
- ``optimizer/step``: AdamW reads and writes parameters, gradients and two states:
  torch's foreach path makes 8 passes (4p + 2g + 14s bytes per parameter), the fused
  kernel one (2p + g + 4s); 8-bit states s = 1; SGD 2p + g. fp16's GradScaler unscales
  and checks the gradients (3g). Gradient clipping, before every optimizer step (HF
  Trainer's max_grad_norm defaults to 1.0; peft's and TRL's loops clip too): torch's
  clip_grad_norm_ reads every gradient for its foreach norm and scales them all in place by
  the clamped coefficient, which it applies even when the norm is below the bound (3g).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from planner.memory.terms import Precision, precision, uses_eager
from planner.memory.variants import variant
from planner.model.architectures import INDEXER_ROLES
from planner.model import inventory as inv
from planner.model import targets
from planner.model.precision import scheme
from planner.model.specs import GpuSpec, ModelSpec, TrainSpec
from planner.time import roofline as R
from planner.time.roofline import Work
from planner.units import FP32

TERMS = ("forward/matmul", "backward/input_grad", "backward/weight_grad", "adapters/matmul",
         "adapters/elementwise", "attention/core", "elementwise/layers", "loss/cross_entropy",
         "recompute/forward", "dora/weight_norm", "dora/dropout_matmul", "qlora/dequant", "deltanet/core",
         "mixer/core", "optimizer/step")
# eager PyTorch ops per decoder layer forward (HF Llama layout: two unfused RMSNorms of 7
# ops, 7 projections, rotary 10, attention 2, activation 2, residual adds 2, views and casts
# about 10); backward about twice; each adapted Linear adds 8 (cast, autocast casts, A, B,
# scale, add), dropout 2, DoRA's weight norm and scaling 15, a 4-bit Linear 3 (dequantize,
# casts).
# (an adapter's and a 4-bit weight's ops are their variants': planner.memory.variants)
OPS_LAYER, OPS_MOE, OPS_HEAD = 40, 20, 10
# GPU kernels the bytes of a term are spread over (small kernels stream below the bandwidth
# ceiling: planner.time.roofline.memory_efficiency), counted from the same HF Llama layout:
# a layer's forward runs about 28 elementwise kernels (two RMSNorms of 7, rotary 10, the
# activation 2, residual adds 2, casts 5), the eager softmax path 6 (scale, mask, softmax,
# dropout, casts), the loss 6 (upcast, log-softmax, gather, mean); per adapted Linear and
# pass, peft's casts, scale and add 6, a 4-bit weight's dequantization and casts 3, DoRA's
# norm and scaling 8.
ELEMENTWISE_KERNELS, EAGER_SCORE_KERNELS, LOSS_KERNELS = 28, 6, 6
LINEAR_KERNELS = {"adapters/elementwise": 6, "qlora/dequant": 3, "dora/weight_norm": 8}
# gradient clipping (torch.nn.utils.clip_grad_norm_): the foreach norm reads each gradient, the
# foreach multiply by the clamped coefficient reads and writes it: 3 passes over the gradients
CLIP_PASSES = 3


def _windowless(kind) -> object:
    """A kind's layer without its attention window (which only :func:`_attended_pairs` reads)."""
    return replace(kind.layer, traits=replace(kind.layer.traits, sliding_window=None))


@lru_cache(maxsize=256)
def layer_views(model: ModelSpec) -> tuple[ModelSpec, ...]:
    """The decoder layers to time, as views of the model (each a ModelSpec whose kinds and
    num_layers are those of the layers it holds): every per-layer term is a sum over them.
    Kinds whose layers differ only in their attention window share one view (their terms
    but attention's are alike per layer, and attention sums its pairs over the view's
    kinds); kinds that differ in anything else (their Linears, norms, MoE, traits) get a
    view each (:meth:`ModelSpec.by_kind`, grouped)."""
    groups: dict[object, list] = {}
    for kind in model.kinds:
        groups.setdefault(_windowless(kind), []).append(kind)
    if len(groups) == 1:
        return (model,)
    return tuple(replace(model, name=f"{model.name}[{'+'.join(k.name for k in kinds)}]",
                         num_layers=sum(k.count for k in kinds), kinds=tuple(kinds))
                 for kinds in groups.values())


def _adapted(view: ModelSpec, train: TrainSpec) -> tuple:
    """The Linears of a view's layers that ``train``'s adapter targets; a named target that
    one kind lacks (and another has) adapts nothing in that kind."""
    try:
        return targets.targeted_linears(view, train.target_modules)
    except ValueError:
        return tuple(lin for lin in view.linears if any(targets._matches(lin.name, t) for t in train.target_modules))


def base_matmuls(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """forward/matmul, backward/input_grad, backward/weight_grad of the base Linears, the
    experts and lm_head (module docstring). Bytes: the weight (c per element: a 16-bit
    copy, dequantized or autocast) and the input and output activations."""
    t, c = train.tokens, prec.compute
    out: list[Work] = []
    for view in layer_views(model):
        out += _layer_matmuls(view, train, prec)
    h, v = model.hidden_size, model.vocab_size
    head = 2 * t * h * v, h * v * c + t * (h + v) * c
    out.append(Work("forward/matmul", *head, R.MATMUL, shape=(t, v, h)))
    out.append(Work("backward/input_grad", *head, R.MATMUL, shape=(t, h, v)))
    if targets.trains_lm_head(train):  # full fine-tuning, or lm_head in modules_to_save
        out.append(Work("backward/weight_grad", *head, R.MATMUL, shape=(v, h, t)))
    return out


def _layer_matmuls(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """:func:`base_matmuls` of one view's decoder layers."""
    t, c, L = train.tokens, prec.compute, model.num_layers
    # (fan_in, fan_out, experts per token, forward only: the indexer's Linears (DeepSeek-V3.2) run
    # under torch.no_grad)
    shapes = [(lin.in_features, lin.out_features, 1, lin.role in INDEXER_ROLES) for lin in model.linears]
    moe = model.layer.moe
    if moe is not None:  # router (unless a Linear above: Gemma 4's router.proj), the top-k experts' gate_up and down
        h, i = model.hidden_size, moe.intermediate
        shapes += [] if moe.router_linear else [(h, moe.experts, 1, False)]
        shapes += [(h, 2 * i, moe.top_k, False), (i, h, moe.top_k, False)]
    full = train.method == "full"
    out: list[Work] = []
    for fan_in, fan_out, k, forward_only in shapes:
        weights = fan_in * fan_out * (moe.experts if k > 1 else 1)
        flops = L * 2 * t * k * fan_in * fan_out
        nbytes = L * (weights * c + t * k * (fan_in + fan_out) * c)
        rows = max(1, t * k // moe.experts) if k > 1 else t  # tokens per expert, on average
        out.append(Work("forward/matmul", flops, nbytes, R.MATMUL, layer=True, shape=(rows, fan_out, fan_in)))
        if forward_only:
            continue
        out.append(Work("backward/input_grad", flops, nbytes, R.MATMUL, shape=(rows, fan_in, fan_out)))
        if full:
            out.append(Work("backward/weight_grad", flops, nbytes + L * weights * (prec.weight - c), R.MATMUL,
                            shape=(fan_out, fan_in, rows)))
    return out


def adapter_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """Each adapted Linear's work, as its adapter kind owns it (adapters/matmul,
    adapters/elementwise, DoRA's dora/weight_norm and dora/dropout_matmul:
    planner.memory.variants), and LoRA on fused expert parameters (peft's ParamWrapper merges
    W + B@A each forward, 2*r*E*in*out FLOPs)."""
    method = variant(train)
    c = prec.compute
    out: list[Work] = []
    for view in layer_views(model):
        L = view.num_layers
        for lin in _adapted(view, train):
            out += _spread(method.adapter.work(lin, train, prec, L, method.base), L)
        for p in targets.targeted_parameters(view, train):
            merged = p.weight
            out.append(Work("adapters/matmul", L * 2 * p.rank * merged, L * merged * 3 * c, R.SMALL_MATMUL, True,
                            p.rank))
            out.append(Work("adapters/matmul", L * 4 * p.rank * merged, L * merged * 6 * c, R.SMALL_MATMUL,
                            narrow=p.rank))
    return out


def _attended_pairs(model: ModelSpec, train: TrainSpec, segment: int | None = None) -> float:
    """Causal (query, key) pairs per sequence summed over layers: s^2/2 for a full layer,
    about s*w - w^2/2 for a layer attending within a sliding window w < s. With ``segment``
    (packed documents of that length, attended one by one: flash-attention's variable-length
    path), a row of s tokens holds s/segment documents, each with its own pairs."""
    s = train.seq_len
    if segment and segment < s:
        return s / segment * _attended_pairs(model, train.with_(seq_len=segment))
    pairs = 0.0
    for kind in model.kinds:
        w = kind.layer.traits.sliding_window
        pairs += kind.count * (s * w - w * w / 2 if w and w < s else s * s / 2)
    return pairs


def attention_work(model: ModelSpec, train: TrainSpec, prec: Precision, segment: int | None = None) -> list[Work]:
    """attention/core (module docstring), summed over the layer views; a view without
    attention projections (no q or qkv role) has none. ``segment``: packed documents' length
    (:func:`_attended_pairs`)."""
    return [w for view in layer_views(model) if view.layer.by_role("q", "qkv", "q_b")
            for w in _layer_attention(view, train, prec, segment)]


def _layer_attention(model: ModelSpec, train: TrainSpec, prec: Precision, segment: int | None = None) -> list[Work]:
    """:func:`attention_work` of one view's decoder layers."""
    b, s, c, L = train.batch_size, train.seq_len, prec.compute, model.num_layers
    qd, kvd, t = model.q_dim, model.kv_dim, train.tokens
    io = L * t * (2 * qd + 2 * kvd) * c
    indexer = _indexer_scoring(model, train)
    if not uses_eager(model, train):
        fwd = 4 * b * _attended_pairs(model, train, segment) * qd  # = 2*b*s^2*q_dim per full layer
        seq = min(s, segment or s)
        rows = b * model.num_heads * s // seq  # batch x heads x documents per row
        return [Work("attention/core", fwd, io, R.ATTENTION, layer=True,
                     attention=(seq, model.head_dim, True, False, rows)),
                Work("attention/core", 2.5 * fwd, 2 * io, R.ATTENTION,
                     attention=(seq, model.head_dim, True, True, rows))] + indexer
    fwd = L * 4 * b * s * s * qd
    scores = L * b * model.num_heads * s * s * (6 * c + 2 * FP32)
    per_head = (b * model.num_heads * s, s, model.head_dim)  # QK^T and PV, batched over heads
    kernels = L * EAGER_SCORE_KERNELS
    return [Work("attention/core", fwd, io, R.MATMUL, layer=True, shape=per_head),
            Work("attention/core", 0, scores, R.MEMORY, layer=True, kernels=kernels),
            Work("attention/core", 2 * fwd, 2 * io, R.MATMUL, shape=per_head),
            Work("attention/core", 0, 2 * scores, R.MEMORY, kernels=2 * kernels)] + indexer


def _indexer_scoring(model: ModelSpec, train: TrainSpec) -> list[Work]:
    """DeepSeek-V3.2's indexer scoring, forward only (torch.no_grad; recomputed under
    checkpointing), per layer (transformers 5.23 DeepseekV32Indexer.forward): every query's
    index heads against every key, 2*b*s^2*heads*head_dim FLOPs as a batched matmul; its fp32
    [b, s, heads, s] scores written and read twice (the scaled and the rectified copy) and the
    weighted [b, s, s] sum, b*s^2*(16*heads + 8) bytes. None without an indexer."""
    idx = model.layer.indexer
    if idx is None:
        return []
    b, s, L = train.batch_size, train.seq_len, model.num_layers
    flops = L * 2 * b * s * s * idx.heads * idx.head_dim
    return [Work("attention/core", flops, 0, R.MATMUL, layer=True, shape=(b * s * idx.heads, s, idx.head_dim)),
            Work("attention/core", 0, L * b * s * s * (16 * idx.heads + 8), R.MEMORY, layer=True)]


def elementwise_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """elementwise/layers and loss/cross_entropy (module docstring)."""
    t, c = train.tokens, prec.compute
    h, stream = model.hidden_size, prec.stream
    final_norm = t * h * (4 * stream + 28)
    v = model.vocab_size
    views = layer_views(model)
    layers = [_layer_elementwise(view, train, prec) for view in views]
    out = [Work("elementwise/layers", 0, b, R.MEMORY, layer=True, kernels=view.num_layers * ELEMENTWISE_KERNELS)
           for b, view in zip(layers, views)]
    out += [Work("elementwise/layers", 0, 2 * b + (3 * final_norm if i == len(layers) - 1 else 0), R.MEMORY,
                 kernels=2 * view.num_layers * ELEMENTWISE_KERNELS)
            for i, (b, view) in enumerate(zip(layers, views))]
    return out + [Work("loss/cross_entropy", 0, t * v * (c + 16) + t * v * (c + 12), R.MEMORY, kernels=LOSS_KERNELS)]


def _mlp_width(model: ModelSpec) -> int:
    """The width of a view's MLP activation per token: the top-k experts' for a mixture of
    experts, else what the layer's down projection reads (its in_features; the config's
    intermediate_size where the layer has none)."""
    moe = model.layer.moe
    if moe is not None:
        return moe.top_k * moe.intermediate
    down = model.layer.by_role("down")
    return down[0].in_features if down else model.intermediate_size


def _layer_elementwise(model: ModelSpec, train: TrainSpec, prec: Precision) -> float:
    """Bytes of one view's decoder layers' elementwise ops, forward (module docstring)."""
    t, L = train.tokens, model.num_layers
    h, hid, stream = model.hidden_size, prec.hidden, prec.stream
    heads = {"q": model.num_heads, "k": model.num_kv_heads}
    norms = sum(t * n.size * (heads.get(n.site, 1) if n.per_head else 1) for n in model.layer.norms)
    norm_bytes = norms * (4 * stream + 28)
    rope = t * (model.q_dim + model.kv_dim) * model.traits.rotary_fraction * 9 * hid
    act = 5 * t * _mlp_width(model) * hid
    residual = 6 * t * h * stream
    return L * (norm_bytes + rope + act + residual)


def dequant_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """The base treatment's work beside each matmul (qlora/dequant for 4-bit weights)."""
    base = variant(train).base
    return [w for view in layer_views(model) for lin in view.linears
            for w in _spread(base.work(lin, train, prec, view.num_layers), view.num_layers)]


def _spread(pieces: list[Work], layers: int) -> list[Work]:
    """A Linear's memory-bound work over ``layers`` layers, as the kernels it launches
    (LINEAR_KERNELS per layer and pass; a backward piece counts two passes)."""
    out = []
    for w in pieces:
        per = LINEAR_KERNELS.get(w.term)
        if w.kind == R.MEMORY and per and not w.kernels:
            w = replace(w, kernels=layers * per * (1 if w.layer else 2))
        out.append(w)
    return out


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
        per += CLIP_PASSES * p
        moved += tensor.elements * per
    return [Work("optimizer/step", 0, moved, R.MEMORY)]


def dispatched_ops(model: ModelSpec, train: TrainSpec) -> int:
    """Eager ops one step launches (see OPS_*): forward, backward (2x), the recomputed
    forward under checkpointing, and the optimizer's foreach kernels (about 10)."""
    method = variant(train)
    passes = 3 + (1 if train.gradient_checkpointing else 0)
    ops = 0
    for view in layer_views(model):
        adapted = len(_adapted(view, train))
        layer = (OPS_LAYER + (OPS_MOE if view.layer.moe is not None else 0) + adapted * method.adapter.ops(train)
                 + method.base.ops * len(view.linears))
        ops += view.num_layers * layer * passes
    return ops + 3 * OPS_HEAD + 10


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


def mixer_work(model: ModelSpec, train: TrainSpec, prec: Precision) -> list[Work]:
    """``mixer/core``: the token mixers that are neither attention nor a DeltaNet, per layer of
    their kind, on the kernel path :func:`planner.memory.mixers.kernels_path` picks (their
    Linears are base_matmuls'). Backward twice the forward, as for :func:`deltanet_work`.

    Mamba-2 (planner.model.architectures.Mamba2: H heads of P dims, N the state, G groups,
    D = conv_dim channels, K taps, Q the chunk), the chunked state-space dual (SSD) algorithm
    (Dao & Gu 2024, "Transformers are SSMs", section 6: diagonal blocks, chunk states, state
    passing, output states; their cost section 6.3), forward:

    - 2*T*D*K: the depthwise causal conv over x, B and C;
    - 2*T*Q*N per score head: C B^T within each chunk, on the fused path once per group (G
      score heads: mamba-ssm's ssd_combined.py, _mamba_chunk_scan_combined_fwd's
      _bmm_chunk_fwd over ngroups), on the torch path once per head (H: transformers 5.23
      modeling_granitemoehybrid.mamba2_chunk_scan repeats B and C to every head before its
      C B^T einsum);
    - 2*T*Q*P per head: those scores times x; 2*T*N*P per head: the chunk states (B^T x);
      2*T*N*P per head: C times the passed states (the state passing itself, (S/Q)*N*P per
      head, left out); Q is the config's chunk size (mamba_chunk_size / chunk_size, which
      both paths use).

    Bytes: the fused kernel (mamba_split_conv1d_scan_combined) reads the in_proj output and
    writes the scan's output, T*(projection + inner)*c forward, twice backward, one fused
    Triton kernel on tensor cores: priced as attention's fused kernels (R.ATTENTION, as
    deltanet_work's fused path); the torch path writes its saved set forward and reads it
    backward as well (planner.memory.mixers.mamba_torch_saved), its batched einsums at
    matmul speed (R.MATMUL).

    LFM2's short convolution (transformers 5.23 modeling_lfm2.Lfm2ShortConv.forward; h the
    width, K the taps): B*x (T*h), the depthwise causal conv (2*T*h*K: causal-conv1d's
    causal_conv1d_fn on the fused path, F.conv1d with K - 1 padding positions on the torch
    path), C times its output (T*h): T*h*(2*K + 2) FLOPs, memory-bound elementwise work
    (R.MEMORY) over four kernels: B*x reads two and writes one T*h*c tensor, the conv reads
    one and writes one (torch: b*h*(S + K - 1)*c, its padded output), C*conv reads two and
    writes one, the transpose to out_proj's layout reads and writes one: 10*T*h*c forward,
    twice backward."""
    from planner.memory import mixers
    from planner.model.architectures import Mamba2, ShortConv

    out = []
    path = mixers.kernels_path(model, train)
    for view in model.by_kind():
        m, n, t, c = view.layer.mixer, view.num_layers, train.tokens, prec.compute
        if isinstance(m, Mamba2):
            scores = m.groups if path == "fused" else m.heads
            flops = n * (2 * t * m.conv_dim * m.conv_kernel + 2 * t * m.chunk * m.state * scores
                         + t * m.heads * (2 * m.chunk * m.head_dim + 4 * m.state * m.head_dim))
            nbytes = n * t * (m.projection + m.inner) * c
            if path == "torch":
                nbytes += n * mixers.mamba_torch_saved(m, train, prec)
            kind = R.MATMUL if path == "torch" else R.ATTENTION
            out += [Work("mixer/core", flops, nbytes, kind, layer=True), Work("mixer/core", 2 * flops, 2 * nbytes, kind)]
        elif isinstance(m, ShortConv):
            flops = n * t * m.width * (2 * m.kernel + 2)
            pad = train.batch_size * m.width * (m.kernel - 1) * c if path == "torch" else 0
            nbytes = n * (10 * t * m.width * c + pad)
            out += [Work("mixer/core", flops, nbytes, R.MEMORY, layer=True, kernels=4),
                    Work("mixer/core", 2 * flops, 2 * nbytes, R.MEMORY, kernels=8)]
    return out


def work(model: ModelSpec, train: TrainSpec, dtype: str, segment: int | None = None) -> list[Work]:
    """Every piece of work of one step, recomputation included; ``segment``: the length of
    the documents packed into each row, where attention sees them one by one."""
    prec = precision(train, dtype)
    pieces = (base_matmuls(model, train, prec) + adapter_work(model, train, prec)
              + attention_work(model, train, prec, segment) + elementwise_work(model, train, prec)
              + dequant_work(model, train, prec) + deltanet_work(model, train, prec)
              + mixer_work(model, train, prec)
              + optimizer_work(model, train, prec, scheme(train, dtype).grad_scaler))
    if train.gradient_checkpointing:
        pieces += [replace(w, term="recompute/forward", layer=False) for w in pieces if w.layer]
    return pieces


def step_time(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, dtype: str,
              eff: R.Efficiency = R.DEFAULT, segment: int | None = None) -> StepTime | None:
    """The roofline time of one step of ``train`` (resolved compute dtype ``dtype``) on
    ``gpu``; None for an fp32 compute dtype (the catalog has 16-bit peaks only).
    ``segment``: packed documents' length (:func:`work`)."""
    if dtype == "fp32":
        return None
    pieces = work(model, train, dtype, segment)
    terms: dict[str, dict] = {}
    compute_s = memory_s = 0.0
    for w in pieces:
        sec, by_flops = R.work_seconds(w, gpu, eff)
        entry = terms.setdefault(w.term, {"flops": 0.0, "bytes": 0.0, "seconds": 0.0})
        entry["flops"] += w.flops
        entry["bytes"] += w.nbytes
        entry["seconds"] += sec
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
