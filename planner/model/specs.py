"""Frozen descriptions of what is planned: the model, the GPU and the training settings.

Pure data: no arithmetic beyond derived sizes, no I/O (the catalog reads files).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache

from planner.model.architectures import Layer, LayerKind, Linear, Traits

METHODS = ("full", "lora", "rslora", "qlora", "dora", "qdora")
QUANTIZED_METHODS = frozenset({"qlora", "qdora"})
DORA_METHODS = frozenset({"dora", "qdora"})
ADAPTER_METHODS = frozenset({"lora", "rslora", "qlora", "dora", "qdora"})

DTYPES = ("auto", "bf16", "fp16", "fp32")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit",
              "paged_adamw_32bit", "sgd")
QUANT_TYPES = ("nf4", "fp4")
# How the training loop handles precision (docs/design.md, "Precision schemes"):
#   autocast - the HF Trainer path (bf16=True / fp16=True): weights in the compute dtype,
#              peft adapters in fp32, forward under torch.autocast. The default.
#   pure     - a plain loop on a model cast to the compute dtype, no autocast.
#   mixed    - fp32 master weights (model loaded in fp32) and an autocast forward.
PRECISIONS = ("autocast", "pure", "mixed")
# attention kernels a training script can ask transformers for; "auto" is what transformers
# picks for the model (SDPA, or eager where the model needs it: softcapping, sinks)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
# the kernels of a model's token mixers that are not attention (a Gated DeltaNet's delta rule,
# Mamba-2's scan, short convolutions, their causal conv1d): "torch", transformers' torch fallbacks
# (torch_chunk_gated_delta_rule, Mamba-2's torch_forward, ...); "fused", the kernel packages'
# fused ops (flash-linear-attention, mamba-ssm, causal-conv1d); "auto", what transformers picks
# when those packages are installed: fused where a kernel exists (GPU users install them, as the
# model cards say)
KERNELS = ("auto", "torch", "fused")
ALL_LINEAR = "all-linear"
# The modules a decoder's fine-tuning script trains whole beside the adapters (peft's
# modules_to_save), each a vocab_size x hidden_size matrix.
SAVABLE_MODULES = ("embed_tokens", "lm_head")
# Data parallelism over several GPUs (planner.memory.sharding): none (one GPU), DDP, FSDP (FSDP2's
# fully_shard), DeepSpeed ZeRO-2 / ZeRO-3; what each can offload to the CPU.
SHARDINGS = ("none", "ddp", "fsdp", "zero2", "zero3")
OFFLOADS = ("none", "optimizer", "params")
OFFLOADABLE = {"fsdp": ("params",), "zero2": ("optimizer",), "zero3": ("optimizer", "params")}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as far as memory is concerned.

    ``kinds`` are its decoder layers as kinds (planner.model.architectures.LayerKind): each a layer
    layout (its Linear modules with their roles, its norms, its traits, its mixture of experts)
    and the indices of the layers of that kind. Per-layer terms sum over the kinds.
    ``config_json`` keeps the HF config fields so that probes can build the real model.
    """

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    kinds: tuple[LayerKind, ...]
    max_position_embeddings: int
    hf_id: str | None = None
    published_params: int | None = None
    lm_head_bias: bool = False  # an untied lm_head with a bias (Phi-3.5-MoE's lm_head_bias)
    config_json: str = field(default="{}", repr=False, compare=False)
    # what every plan of this model says about it (a Hub model: where its config came from,
    # its parameter count against the checkpoint's)
    notes: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # Gemma 4's per-layer inputs (PLE): p = hidden_size_per_layer_input values per token and
    # layer, from an embedding of per_layer_vocab rows (L*p wide) and a Linear h -> L*p of the
    # embedding output (per_layer_model_projection); 0: none
    per_layer_input: int = 0
    per_layer_vocab: int = 0
    # a view's (:meth:`by_kind`) whole model's Linear names, which targets are checked against
    model_linear_names: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def __hash__(self) -> int:
        # a few compared fields: consistent with ==, and cheap (plans are cached per model)
        return hash((self.name, self.vocab_size, self.hidden_size, self.num_layers, self.intermediate_size))

    @property
    def layer(self) -> Layer:
        """The first kind's layout: the layout of every layer where the kinds differ only in their
        attention window; a hybrid's kinds differ in their modules, and Gemma 4's in their widths
        too, so their per-layer terms read each kind's view (:meth:`by_kind`, :meth:`kind_view`),
        whose layer and widths are that kind's."""
        return self.kinds[0].layer

    def by_kind(self) -> tuple["ModelSpec", ...]:
        """This model seen one kind at a time: a model of that kind's layers only (its
        num_layers the kind's count, and its head_dim, kv heads and intermediate size the
        kind's own where it has them), for the per-layer terms, which sum over the kinds."""
        if len(self.kinds) == 1:
            return (self,)
        return _views(self)

    def kind_of(self, index: int) -> LayerKind:
        """The kind that holds layer ``index`` (negative counts from the end)."""
        index %= self.num_layers
        return next(k for k in self.kinds if index in k.indices)

    def kind_view(self, index: int) -> "ModelSpec":
        """The view (:meth:`by_kind`) of the kind that holds layer ``index`` (negative counts
        from the end): what a moment inside that layer reads."""
        if len(self.kinds) == 1:
            return self
        return self.by_kind()[self.kinds.index(self.kind_of(index))]

    @property
    def moe_view(self) -> "ModelSpec | None":
        """The view (:meth:`by_kind`) of the first kind with a mixture of experts, or None
        (a model whose first layers are dense has its experts in a later kind)."""
        return next((v for v, k in zip(self.by_kind(), self.kinds) if k.layer.moe is not None), None)

    @property
    def linears(self) -> tuple[Linear, ...]:
        return self.layer.linears

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(lin.name for lin in self.linears)

    @property
    def all_linear_names(self) -> tuple[str, ...]:
        """The Linear module names of every kind, in order, once each (kinds whose Linears
        differ: Llama 4 Maverick's dense and MoE layers); a view's, its whole model's."""
        return self.model_linear_names or tuple(dict.fromkeys(lin.name for k in self.kinds for lin in k.layer.linears))

    @property
    def moe(self):
        """The mixture of experts of the first kind that has one (None for a dense model, and
        for a view of a dense kind)."""
        return next((k.layer.moe for k in self.kinds if k.layer.moe is not None), None)

    @property
    def traits(self) -> Traits:
        return self.layer.traits

    @property
    def eager_attention(self) -> bool:
        return self.layer.traits.eager_attention

    def with_traits(self, **changes) -> "ModelSpec":
        """This model with some layer traits changed in every kind (for tests and what-if plans)."""
        return replace(self, kinds=tuple(replace(k, layer=replace(k.layer, traits=replace(k.layer.traits, **changes)))
                                         for k in self.kinds))

    def hf_config(self) -> dict:
        """The HF config.json fields this spec was made from (a fresh dict)."""
        return json.loads(self.config_json)


@lru_cache(maxsize=256)
def _views(model: ModelSpec) -> tuple[ModelSpec, ...]:
    return tuple(replace(model, name=f"{model.name}[{k.name}]", num_layers=k.count, kinds=(k,),
                         model_linear_names=model.all_linear_names,
                         head_dim=k.head_dim or model.head_dim, num_kv_heads=k.kv_heads or model.num_kv_heads,
                         intermediate_size=k.intermediate or model.intermediate_size) for k in model.kinds)


@dataclass(frozen=True)
class GpuSpec:
    """A GPU model, with the memory its driver reports (nvidia-smi), in bytes."""

    name: str
    full_name: str
    memory_bytes: int
    compute_capability: str
    bf16: bool
    bandwidth_gbs: float
    tflops_dense_16bit: float
    family: str
    cuda_context_bytes: int
    # the time model's (planner.time.roofline): streaming multiprocessors (0: unknown, no wave
    # quantization), and the fraction of the datasheet tensor peak a long continuous GEMM
    # sustains under the board's power limit, beyond the large-GEMM efficiency (1.0: boost held)
    sm_count: int = 0
    sustained_fraction: float = 1.0


@dataclass(frozen=True)
class TrainSpec:
    """The fine-tuning settings of one plan (the same names as the CLI flags)."""

    method: str = "lora"
    rank: int = 16
    alpha: float | None = None  # None: 2 * rank
    target_modules: tuple[str, ...] = (ALL_LINEAR,)
    # peft's target_parameters: fused expert weights ("experts.gate_up_proj", "experts.down_proj")
    target_parameters: tuple[str, ...] = ()
    batch_size: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = False
    dtype: str = "auto"
    precision: str = "autocast"
    optim: str = "adamw_torch"
    quant_type: str = "nf4"
    double_quant: bool = True
    lora_dropout: float = 0.0  # peft's default
    attn_implementation: str = "auto"
    kernels: str = "auto"  # KERNELS
    # peft's modules_to_save: whole modules trained beside the adapters ("embed_tokens", "lm_head")
    modules_to_save: tuple[str, ...] = ()
    num_gpus: int = 1  # data-parallel ranks; batch_size is per GPU
    sharding: str = "none"
    offload: str = "none"

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.rank < 1:
            problems.append(f"rank must be at least 1, got {self.rank}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, got {self.batch_size}")
        if self.seq_len < 1:
            problems.append(f"sequence length must be at least 1, got {self.seq_len}")
        if self.alpha is not None and self.alpha <= 0:
            problems.append(f"alpha must be positive, got {self.alpha}")
        if self.dtype not in DTYPES:
            problems.append(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPES)})")
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r} (choose from {', '.join(PRECISIONS)})")
        if self.optim not in OPTIMIZERS:
            problems.append(f"unknown optimizer {self.optim!r} (choose from {', '.join(OPTIMIZERS)})")
        if self.quant_type not in QUANT_TYPES:
            problems.append(f"unknown quant type {self.quant_type!r} (choose from {', '.join(QUANT_TYPES)})")
        if not self.target_modules:
            problems.append("target modules must not be empty")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora dropout must be in [0, 1), got {self.lora_dropout}")
        if self.modules_to_save and self.num_gpus > 1:
            problems.append("--modules-to-save is planned on one GPU only (its copies' sharding is not modelled yet)")
        unknown = [m for m in self.modules_to_save if m not in SAVABLE_MODULES]
        if unknown:
            problems.append(f"modules to save must be among {', '.join(SAVABLE_MODULES)}, got {', '.join(unknown)}")
        if len(set(self.modules_to_save)) != len(self.modules_to_save):
            problems.append(f"modules to save are named twice: {', '.join(self.modules_to_save)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            problems.append(f"unknown attention implementation {self.attn_implementation!r} "
                            f"(choose from {', '.join(ATTN_IMPLEMENTATIONS)})")
        if self.kernels not in KERNELS:
            problems.append(f"unknown kernels {self.kernels!r} (choose from {', '.join(KERNELS)})")
        problems += self._parallel_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _parallel_problems(self) -> list[str]:
        if self.num_gpus < 1:
            return [f"number of GPUs must be at least 1, got {self.num_gpus}"]
        if self.sharding not in SHARDINGS:
            return [f"unknown sharding {self.sharding!r} (choose from {', '.join(SHARDINGS)})"]
        if self.num_gpus > 1 and self.sharding == "none":
            return [f"--num-gpus {self.num_gpus} needs a --sharding ({', '.join(SHARDINGS[1:])})"]
        if self.num_gpus == 1 and self.sharding != "none":
            return [f"--sharding {self.sharding} needs --num-gpus 2 or more (one GPU shards nothing)"]
        if self.offload not in OFFLOADS:
            return [f"unknown offload {self.offload!r} (choose from {', '.join(OFFLOADS)})"]
        if self.offload != "none" and self.offload not in OFFLOADABLE.get(self.sharding, ()):
            can = "; ".join(f"{k}: {', '.join(v)}" for k, v in OFFLOADABLE.items())
            return [f"--offload {self.offload} needs a sharding that offloads it ({can}), got --sharding {self.sharding}"]
        if self.sharding == "fsdp" and self.optim in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
            return [f"--optim {self.optim} cannot run under FSDP (bitsandbytes' optimizers do not take FSDP2's "
                    "sharded DTensor parameters): use adamw_torch or adamw_torch_fused"]
        return []

    @property
    def parallel(self) -> bool:
        """Several GPUs (the per-GPU plan of one data-parallel rank)."""
        return self.num_gpus > 1

    @property
    def lora_alpha(self) -> float:
        return float(2 * self.rank if self.alpha is None else self.alpha)

    @property
    def scaling(self) -> float:
        """LoRA scaling: alpha / r, or alpha / sqrt(r) for rsLoRA (Kalajdzievski 2023)."""
        if self.method == "rslora":
            return self.lora_alpha / self.rank ** 0.5
        return self.lora_alpha / self.rank

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def is_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    @property
    def is_quantized(self) -> bool:
        return self.method in QUANTIZED_METHODS

    @property
    def is_dora(self) -> bool:
        return self.method in DORA_METHODS

    def with_(self, **changes) -> "TrainSpec":
        return replace(self, **changes)

    @classmethod
    def from_record(cls, row: dict) -> "TrainSpec":
        """The settings of a results-table row, every cell text (probes.store: the column names
        are these fields'): a missing or empty cell keeps the default (an older table's rows ran
        it), lists are comma-separated, flags are true / false. Raises ValueError on bad values."""
        values = {}
        for f in fields(cls):
            cell = row.get(f.name)
            if cell is None or str(cell).strip() == "":
                continue
            text, default = str(cell).strip(), f.default
            if isinstance(default, bool):
                values[f.name] = text.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, tuple):
                values[f.name] = tuple(part.strip() for part in text.split(",") if part.strip())
            elif isinstance(default, int):
                values[f.name] = int(float(text))
            elif isinstance(default, float) or f.name == "alpha":
                values[f.name] = float(text)
            else:
                values[f.name] = text
        return cls(**values)
