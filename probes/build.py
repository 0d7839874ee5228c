"""One model + adapter builder shared by every device backend and by the validator.

What it builds is a :class:`ProbeModel`: a name, the HF config.json fields and the attention
implementation, nothing of the planner's layout, so that any decoder transformers can build
is measurable (a planner :class:`~planner.ModelSpec` converts with :func:`from_spec`, a config
whose model_type the planner lacks with :func:`from_unknown`). Every function that takes a
model takes either.

``build(model, train, device)`` does what a user's fine-tuning script does, in the same order:

1. The base model from its config with random init (``AutoModelForCausalLM.from_config``,
   seeded: :func:`random_init`), or from local safetensors (``--weights DIR``:
   :func:`load_pretrained`), in the model dtype: the compute dtype (bf16 / fp16 / fp32), or
   fp32 master weights under ``precision="mixed"``. SDPA attention (eager for models with
   attention softcapping), ``use_cache=False``.
2. QLoRA / QDoRA: ``BitsAndBytesConfig(load_in_4bit, nf4|fp4, double quant, compute dtype)``.
   Real devices load through ``from_pretrained(quantization_config=...)`` (``from_config`` does not
   quantize): a random-init model is saved as safetensors to a temporary folder first. The meta
   device (for the fake tracer) runs transformers' own quantizer (``preprocess_model`` ->
   ``replace_with_bnb_linear``) and quantizes each weight on meta with bitsandbytes (its ops have
   fake kernels), like ``from_pretrained`` does with real weights.
   Then ``prepare_model_for_kbit_training(use_gradient_checkpointing=..., use_reentrant=False)``.
3. Gradient checkpointing (non-reentrant) for the other methods, and
   ``enable_input_require_grads`` for adapters.
4. ``get_peft_model(LoraConfig(r, alpha, target_modules, use_dora, use_rslora))``: peft keeps the
   adapters in fp32 (``autocast_adapter_dtype=True``, its default).
5. ``model.train()``; every bitsandbytes ``Linear4bit`` gets ``support_avx512bf16_for_cpu = False``
   (otherwise some CPUs give wrong results after an eval-mode forward).

Never ``trust_remote_code``; weights only from safetensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from planner import ModelSpec, TrainSpec
from planner.model.catalog import UnknownArchitecture
from planner.model.precision import resolve_dtype, scheme

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SEED = 0


@dataclass(frozen=True)
class Precision:
    """The resolved dtypes of a run: :class:`planner.model.precision.Scheme` as torch dtypes.

    ``compute``: activations / autocast dtype; ``weights``: the dtype the model is loaded in;
    ``autocast``: whether forward runs under ``torch.autocast``; ``grad_scaler``: fp16 with
    autocast uses a GradScaler, as HF Trainer ``fp16=True`` does.
    """

    name: str  # "bf16" / "fp16" / "fp32"
    compute: torch.dtype
    weights: torch.dtype
    autocast: bool
    grad_scaler: bool


def device_dtype(dtype: str, device: str) -> tuple[str, tuple[str, ...]]:
    """The compute dtype ``dtype`` resolves to on ``device`` ("cuda", "cpu", "fake" or
    "meta"), and any note: :func:`planner.model.precision.resolve_dtype`. The CPU (and so the
    fake tracer) has bf16; a CUDA GPU has it natively from compute capability 8.0 on, as the
    planner's GPU catalog says (torch's default check also counts the emulated bf16 of a T4)."""
    if device == "cuda":
        return resolve_dtype(dtype, torch.cuda.is_bf16_supported(including_emulation=False), "this GPU")
    return resolve_dtype(dtype, True, device)


def resolve_precision(train: TrainSpec, device: str) -> Precision:
    """The precision scheme of ``train`` (autocast / pure / mixed) on ``device``."""
    s = scheme(train, device_dtype(train.dtype, device)[0])
    return Precision(name=s.compute, compute=DTYPES[s.compute], weights=DTYPES[s.weights],
                     autocast=s.autocast, grad_scaler=s.grad_scaler)


# ---------------------------------------------------------------------- the model

@dataclass(frozen=True)
class ProbeModel:
    """What the builder and the measurements read of a model, and nothing more.

    ``config``: the HF config.json fields (``model_type`` included); ``attn_implementation``:
    "sdpa", or "eager" where attention logit softcapping rules SDPA out (Gemma-2) or where
    the validator wants one kernel for every dtype; ``vocab_size``: for the synthetic tokens.
    """

    name: str
    config: dict = field(hash=False, repr=False)
    attn_implementation: str
    vocab_size: int

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def eager(self) -> bool:
        return self.attn_implementation == "eager"

    def attention_shape(self) -> tuple[int, int, int]:
        """(heads, KV heads, head dim) from the config, as the HF decoders read them."""
        heads = self.config["num_attention_heads"]
        kv_heads = self.config.get("num_key_value_heads") or heads
        head_dim = self.config.get("head_dim") or self.config["hidden_size"] // heads
        return heads, kv_heads, head_dim


def from_spec(spec: ModelSpec) -> ProbeModel:
    """The probe's view of a planner model: its config, SDPA unless the planner plans it with
    eager attention (softcapping)."""
    return ProbeModel(name=spec.name, config=spec.hf_config(),
                      attn_implementation="eager" if spec.eager_attention else "sdpa",
                      vocab_size=spec.vocab_size)


def from_unknown(exc: UnknownArchitecture) -> ProbeModel:
    """A config whose model_type the planner lacks, if transformers builds it as a decoder.

    Raises ValueError (one line) when transformers does not know the model_type, when its
    causal-LM class is not a decoder-only model (an encoder such as BERT, whose causal-LM head
    sits on a bidirectional encoder, or a vision-only model), or without a vocab_size.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    config, name = exc.config, exc.name
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ValueError(f"{name}: unknown model_type {model_type!r}: neither the planner nor "
                         "transformers knows it")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ValueError(f"{name}: not a decoder: model_type {model_type!r} is not a decoder-only "
                         "causal LM in transformers (probe measures decoder fine-tuning)")
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ValueError(f"{name}: config field 'vocab_size' must be a positive integer, got {vocab!r}")
    return ProbeModel(name=name, config=dict(config),
                      attn_implementation="eager" if config.get("attn_logit_softcapping") else "sdpa",
                      vocab_size=vocab)


def probe_model(model: ModelSpec | ProbeModel, train: TrainSpec | None = None) -> ProbeModel:
    """``model`` as a :class:`ProbeModel` (a planner spec is converted), with the attention
    kernel ``train`` asks for: eager when asked (a model that needs eager keeps it), and SDPA
    for flash_attention_2, which a CPU cannot run: SDPA's flash kernel keeps what it keeps."""
    out = model if isinstance(model, ProbeModel) else from_spec(model)
    if train is not None and train.attn_implementation == "eager" and not out.eager:
        out = dataclasses.replace(out, attn_implementation="eager")
    return out


def hf_config(model: ModelSpec | ProbeModel):
    """The transformers config of a model (no hub access, no remote code), ``use_cache=False``."""
    from transformers import AutoConfig

    fields = dict(probe_model(model).config)
    model_type = fields.pop("model_type")
    fields.pop("architectures", None)
    fields["use_cache"] = False
    return AutoConfig.for_model(model_type, **fields)


def bnb_config(train: TrainSpec, precision: Precision):
    """The 4-bit config of ``train``. Sharded over several GPUs (FSDP, ZeRO-3) the packed
    weights are stored in the compute dtype (``bnb_4bit_quant_storage``), as FSDP+QLoRA
    training loads them, so that they shard like any parameter: the same bytes, half as many
    elements as uint8 storage for bf16."""
    from transformers import BitsAndBytesConfig

    sharded = train.num_gpus > 1 and train.sharding in ("fsdp", "zero3")
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=train.quant_type,
        bnb_4bit_use_double_quant=train.double_quant, bnb_4bit_compute_dtype=precision.compute,
        bnb_4bit_quant_storage=precision.compute if sharded else torch.uint8,
    )


def lora_config(train: TrainSpec, exclude: tuple[str, ...] = ()):
    """peft's LoraConfig of ``train``; ``exclude``: modules peft must leave alone
    (:func:`routing_linears`)."""
    from peft import LoraConfig

    targets = list(train.target_modules)
    target_modules = "all-linear" if targets == ["all-linear"] else targets
    return LoraConfig(
        r=train.rank, lora_alpha=train.lora_alpha, target_modules=target_modules,
        target_parameters=list(train.target_parameters) or None,
        lora_dropout=train.lora_dropout, bias="none", task_type="CAUSAL_LM",
        modules_to_save=list(train.modules_to_save) or None,
        exclude_modules=list(exclude) or None,
        use_dora=train.is_dora, use_rslora=train.method == "rslora",
    )


# ---------------------------------------------------------------------- base model

def random_init(model: ModelSpec | ProbeModel, dtype: torch.dtype, device: str, seed: int = SEED):
    """The base model from its config, random weights drawn from ``seed``, on ``device``
    ("cpu", "cuda", or "meta": shapes only), in training mode as transformers makes it."""
    from transformers import AutoModelForCausalLM

    model = probe_model(model)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(
            hf_config(model), dtype=dtype, attn_implementation=model.attn_implementation)


def load_pretrained(path: str | Path, model: ModelSpec | ProbeModel, dtype: torch.dtype, device: str,
                    quantization_config=None):
    """The base model from a local save_pretrained folder (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation=probe_model(model).attn_implementation,
        device_map={"": device}, quantization_config=quantization_config,
        use_safetensors=True, trust_remote_code=False, use_cache=False)


def _quantize_on_meta(model, train: TrainSpec, precision: Precision) -> None:
    """What ``from_pretrained(quantization_config=...)`` does, on the meta device.

    transformers' bnb quantizer swaps every Linear (but lm_head) for ``Linear4bit``; each
    weight, in the load dtype, is then quantized by bitsandbytes (``Params4bit._quantize``),
    whose ops have fake/meta kernels: the packed uint8 weight and the quant state get their
    real shapes and dtypes without memory.
    """
    import bitsandbytes as bnb
    from transformers.quantizers import AutoHfQuantizer

    _keep_bnb_code_cache_real()
    quantizer = AutoHfQuantizer.from_config(bnb_config(train, precision), pre_quantized=False)
    quantizer.preprocess_model(model=model, dtype=precision.weights, device_map={"": "meta"})
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            old = module.weight
            dense = torch.empty(old.shape, dtype=precision.weights, device="meta")
            new = bnb.nn.Params4bit(dense, requires_grad=False, **old.__dict__)
            module.weight = new._quantize(torch.device("meta"))
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)


def _keep_bnb_code_cache_real() -> None:
    """bitsandbytes caches its 8-bit "dynamic" code table (used by double quantization) on
    the device of the first tensor it quantizes. Quantizing on meta first would cache a meta
    table and break every later real quantization in the process ("Cannot copy out of meta
    tensor"): fill the cache with the CPU table bitsandbytes would make, before meta work.
    """
    import bitsandbytes.functional as F

    cached = F.name2qmap.get("dynamic")
    if cached is None or cached.device.type == "meta":
        F.name2qmap["dynamic"] = F.create_dynamic_map()


def load_base(model: ModelSpec | ProbeModel, train: TrainSpec, precision: Precision, device: str,
              weights: str | Path | None = None):
    """The base model on ``device`` ("cpu", "cuda" or "meta"), quantized for qlora/qdora;
    from the safetensors in ``weights`` when given, else random init."""
    dtype = precision.weights
    quant = bnb_config(train, precision) if train.is_quantized else None
    if device == "meta":
        base = random_init(model, dtype, "meta")
        if train.is_quantized:
            _quantize_on_meta(base, train, precision)
        return base
    if weights is not None:
        return load_pretrained(weights, model, dtype, device, quant)
    if not train.is_quantized:
        return random_init(model, dtype, device)
    # from_config does not quantize: save the random-init model, load it as a user would.
    with tempfile.TemporaryDirectory(prefix="probe-model-") as tmp:
        base = random_init(model, dtype, "cpu")
        # a private copy per process: under torch.distributed transformers saves on rank 0 only
        base.should_save_on_this_rank = lambda is_main_process: True
        base.save_pretrained(tmp, safe_serialization=True)
        return load_pretrained(tmp, model, dtype, device, quant)


# ---------------------------------------------------------------------- method

def _enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed the method
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_method(model, train: TrainSpec):
    """Freeze / quantize-prepare / checkpoint / wrap with peft, as a training script does."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if train.is_quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif train.gradient_checkpointing:
        _enable_checkpointing(model)
    if train.is_adapter:
        if train.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, lora_config(train, routing_linears(model)))
    else:
        model.requires_grad_(True)
    model.train()
    disable_bnb_cpu_fast_path(model)
    return model


def routing_linears(model) -> tuple[str, ...]:
    """The modules of ``model`` that are an ``nn.Linear`` by class but whose forward returns no
    tensor: Llama-4's and Phi-3.5-MoE's routers (transformers 5.23 ``Llama4Router``,
    ``PhimoeTopKRouter``) subclass nn.Linear and return the routing as a tuple.

    peft wraps every nn.Linear all-linear finds, and its LoRA Linear adds the adapter's product
    to the base layer's result (peft 0.21 ``lora.layer.Linear.forward``), which fails on a tuple
    (``'tuple' object has no attribute 'dtype'``) in a real step as in a trace: a training
    script has to leave them out (``LoraConfig(exclude_modules=...)``) to run at all, and so does
    the builder. Each such class is found once, by running its forward on a meta input."""
    found, verdict = [], {}
    for name, module in model.named_modules():
        cls = type(module)
        if not (isinstance(module, torch.nn.Linear) and cls.forward is not torch.nn.Linear.forward
                and cls.__module__.startswith("transformers.models.")):
            continue
        if cls not in verdict:
            verdict[cls] = not isinstance(_meta_forward(module), torch.Tensor)
        if verdict[cls]:
            found.append(name)
    return tuple(found)


def _meta_forward(module: torch.nn.Linear):
    """``module``'s forward on a one-token meta input, its parameters as meta tensors."""
    params = {n: torch.empty_like(p, device="meta") for n, p in module.named_parameters()}
    x = torch.empty(1, module.in_features, dtype=module.weight.dtype, device="meta")
    with torch.no_grad():
        return torch.func.functional_call(module, params, (x,))


def disable_bnb_cpu_fast_path(model) -> None:
    """Every bitsandbytes Linear4bit off its CPU AVX-512 bf16 path (wrong results after an
    eval-mode forward on some CPUs)."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build(model: ModelSpec | ProbeModel, train: TrainSpec, device: str, weights: str | Path | None = None):
    """The model of ``train`` on ``device`` ("cpu", "cuda", or "meta" for the fake tracer)."""
    precision = resolve_precision(train, "fake" if device == "meta" else device)
    model_type = probe_model(model).model_type
    with _quiet():
        model = load_base(model, train, precision, device, weights)
        # On meta, tensors peft / bitsandbytes create without a device (e.g. the empty
        # placeholder of Params4bit.__deepcopy__, used by QDoRA's init) must be meta too.
        with torch.device("meta") if device == "meta" else contextlib.nullcontext():
            model = apply_method(model, train)
    # the kernels its steps run for the Mamba-2 / short-convolution layers (probes.mixer_kernels)
    # (traced ops on the CPU and the fake tracer; a CUDA step runs the kernels transformers found)
    model.probe_kernels = (model_type, train.kernels if device in ("cpu", "meta") else "torch", train.is_quantized)
    return model


@contextlib.contextmanager
def _quiet():
    """Silence the library chatter of a build (progress bars, deprecation notes)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
