"""The public entry point: one plan for one model x GPU x method and settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from planner.memory import calibration
from planner.memory import terms as C
from planner.model import counts
from planner.model import targets
from planner.time import roofline
from planner.time import calibration as speed_calibration
from planner.time import timing
from planner.model.architectures import ATTENTION_ROLES, SHARED_ROLES, check_known
from planner.model.catalog import get_gpu, get_model
from planner.memory.moments import step_memory
from planner.model.precision import resolve_dtype
from planner.model.specs import ALL_LINEAR, GpuSpec, ModelSpec, TrainSpec


@dataclass(frozen=True)
class Plan:
    """Predicted memory of one training configuration on one GPU. Bytes are integers."""

    model: str
    gpu: str
    method: str
    settings: dict = field(hash=False)
    components: dict = field(hash=False)  # breakdown of the peak phase + runtime terms
    phases: dict = field(hash=False)  # phase -> live bytes
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    device_used_bytes: int
    gpu_memory_bytes: int
    fits: bool
    headroom_bytes: int
    trainable_params: int
    total_params: int
    peak_phase: str
    peak_moment: str  # which moment of the peak phase peaked (planner.memory.moments.MOMENTS)
    notes: tuple[str, ...] = ()
    # what the step time is planned from (model, gpu, train, dtype, efficiency), None in fp32:
    # the time model runs only when a plan's time is read, not for each plan a search makes
    timing_inputs: tuple | None = field(default=None, repr=False, hash=False, compare=False)

    @cached_property
    def time(self) -> timing.StepTime | None:
        """The planned step time (planner.time.timing), None in fp32."""
        return None if self.timing_inputs is None else timing.step_time(*self.timing_inputs)

    @property
    def step_seconds(self) -> float | None:
        return self.time.step_seconds if self.time else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.time.tokens_per_second if self.time else None

    @property
    def mfu(self) -> float | None:
        return self.time.mfu if self.time else None

    def to_dict(self) -> dict:
        """The JSON contract: one object per plan."""
        return {
            "model": self.model, "gpu": self.gpu, "method": self.method,
            "settings": dict(self.settings), "components": dict(self.components),
            "peak_allocated_bytes": self.peak_allocated_bytes,
            "peak_reserved_bytes": self.peak_reserved_bytes,
            "device_used_bytes": self.device_used_bytes,
            "gpu_memory_bytes": self.gpu_memory_bytes, "fits": self.fits,
            "headroom_bytes": self.headroom_bytes, "trainable_params": self.trainable_params,
            "total_params": self.total_params, "peak_phase": self.peak_phase,
            "peak_moment": self.peak_moment, "phases": dict(self.phases), "notes": list(self.notes),
            "step_seconds": self.step_seconds, "tokens_per_second": self.tokens_per_second, "mfu": self.mfu,
            "time": None if self.time is None else {
                "bound": self.time.bound, "gpu_seconds": self.time.gpu_seconds,
                "dispatch_seconds": self.time.dispatch_seconds, "model_flops": self.time.model_flops,
                "terms": {k: dict(v) for k, v in self.time.terms.items()}},
        }


def moe_notes(model: ModelSpec, train: TrainSpec, dtype: str) -> tuple[str, ...]:
    """What a plan of a mixture-of-experts model assumes and what changes its answer most."""
    view = model.moe_view
    if view is None:
        return ()
    moe, gib = view.layer.moe, 1 << 30
    if moe.dispatch == "dense":
        routing = ("every expert runs on every token, scaled by its router score (0 for the experts not "
                   "chosen; transformers' Llama4TextMoe), so routing changes no tensor")
    else:
        routing = ("balanced routing assumed (transformers' grouped_mm experts keep the same tensors however "
                   "tokens are routed)")
    notes = (f"mixture of experts ({moe.experts} experts, top-{moe.top_k}): {routing}; the load-balancing loss "
             "is off, as in transformers' configs (output_router_logits=False)",)
    if moe.router_tuple and train.is_adapter and ALL_LINEAR in train.target_modules:
        notes += (f"the router is an nn.Linear whose forward returns the routing as a tuple: peft 0.21 wraps it "
                  f"under all-linear and the step fails ('tuple' object has no attribute 'dtype'), so it is "
                  f"planned left out, as a script must leave it out: LoraConfig(exclude_modules=[...'{moe.router}'])",)
    expert_params = counts.role_params(model, "router", "router_bias", "experts", "expert_bias")
    if train.is_quantized:
        # the base weights as QLoRA stores them against LoRA's 16-bit ones (the same targets)
        prec = C.precision(train, dtype)
        quantized = C.weights_base(model, train, prec)
        sixteen = C.weights_base(model, train.with_(method="lora"), C.precision(train.with_(method="lora"), dtype))
        verdict = ("QLoRA's base weights are larger than LoRA's on this model "
                   f"({quantized / gib:.1f} against {sixteen / gib:.1f} GiB)" if quantized > sixteen
                   else "QLoRA saves little on this model")
        notes += (f"bitsandbytes 4-bit quantizes nn.Linear modules only: the fused experts and routers "
                  f"({expert_params / 1e9:.1f}B parameters) stay unquantized, and prepare_model_for_kbit_training "
                  f"casts them to fp32 ({expert_params * 4 / gib:.1f} GiB): {verdict}",)
        if moe.dispatch == "dense" and C.precision(train, dtype).autocast:
            copies = C.moe_saved_parts(view, train, C.precision(train, dtype))["weight_copies"]
            notes += (f"under autocast each expert matmul (torch.bmm) runs on a {dtype if dtype != 'auto' else '16-bit'} "
                      f"copy of its fp32 weight and keeps it for backward: {copies / gib:.2f} GiB per MoE layer",)
    adapted = targets.targeted_parameters(view, train)
    experts = [t for t in adapted if t.part != "router"]
    if experts:
        merged = sum(t.weight for t in experts) * C.parameter_bytes(train, C.precision(train, dtype))
        how = ("peft's all-linear also adapts the router and the fused experts (target_parameters; "
               "gate_up at rank 2r)" if not train.target_parameters else "LoRA on the fused experts")
        attention = [lin.name for lin in view.linears if lin.role in ATTENTION_ROLES]
        notes += (f"{how}: every forward materializes the merged expert weights, {merged / gib:.2f} GiB per "
                  f"layer kept for backward; --target-modules {','.join(attention)} adapts the "
                  "attention only",)
    dropped = (["the dense layers' MLP"] if len(model.kinds) > 1 else []) + (
        ["the shared experts"] if view.layer.by_role(*SHARED_ROLES) else [])
    if view.traits.peft_moe_conversion and train.is_adapter and dropped:
        notes += ("peft converts the MLP module names (gate_proj, up_proj, down_proj) to the fused experts' "
                  f"target_parameters: no adapter on {' or '.join(dropped)}",)
    if train.sharding == "zero3" and len(model.kinds) > 1:
        notes += ("DeepSpeed ZeRO-3's gathered layer and prefetch bucket are planned at the largest layer kind's "
                  "size while a smaller (dense) layer runs too: a bound (FSDP's are planned per layer kind)",)
    shared = [lin for lin in view.linears if lin.role in SHARED_ROLES]
    if shared and train.is_adapter:
        adapted = [lin.name for lin in shared if lin.name in targets.targeted_names(view, train)]
        notes += (f"the shared expert (width {moe.shared_intermediate}) is made of nn.Linear modules: "
                  + (f"LoRA adapts {', '.join(adapted)}" if adapted else "not adapted by these targets")
                  + ("; bitsandbytes packs them to 4 bits" if train.is_quantized else ""),)
    if moe.beside_dense and train.is_adapter:
        # Gemma 4 (tracer, tests/probes/test_gemma4_moe_traced.py): gemma4 has no checkpoint-conversion
        # pattern in peft 0.21, so all-linear keeps to the nn.Linear modules
        routed = "LoRA on the fused experts too (target_parameters)" if experts else (
            "never the fused experts (--target-parameters experts.gate_up_proj,experts.down_proj adapts them)")
        notes += ("each layer runs its dense MLP (gate_proj, up_proj, down_proj) beside the routed experts; the "
                  "router's projection (router.proj) is a plain nn.Linear: all-linear adapts both, " + routed
                  + ("; bitsandbytes packs them to 4 bits while the experts stay fp32" if train.is_quantized else ""),)
    if model.model_type == "gpt_oss":
        notes += ("gpt-oss checkpoints ship MXFP4 experts, which bitsandbytes cannot load and which do not "
                  "train: planned with the experts dequantized to the compute dtype",)
    return notes


SHARDING_NAMES = {"ddp": "DDP", "fsdp": "FSDP", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}


def parallel_notes(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, dtype: str) -> tuple[str, ...]:
    """What a plan over several GPUs means and assumes (none for one GPU)."""
    if not train.parallel:
        return ()
    name = SHARDING_NAMES[train.sharding]
    notes = (f"per GPU: one rank of {train.num_gpus} x {gpu.name} under {name}; batch_size {train.batch_size} is per "
             f"GPU (global batch {train.num_gpus * train.batch_size}); a plan fits when its largest rank (rank 0) fits",
             "time: one GPU's step on its batch, tokens per second per GPU; the collectives' time (all-gather, "
             "reduce-scatter, all-reduce) is not modelled",)
    if train.sharding in ("ddp", "fsdp"):
        notes += (f"{name} terms checked against rank 0 traced with torch's fake process group "
                  f"(probe --device fake --num-gpus {train.num_gpus} --sharding {train.sharding})",)
    else:
        notes += (f"{name}: model states from formulas with DeepSpeed's defaults (bf16 module, fp32 master weights and "
                  "Adam partitioned, reduce bucket 5e8, ZeRO-3 prefetch bucket 5e7 elements; Rajbhandari et al. 2020), "
                  "not traced (DeepSpeed is not a dependency); activations as with one GPU",)
    if train.is_quantized and train.sharding in ("fsdp", "zero3"):
        notes += (f"QLoRA / QDoRA under {name}: load the 4-bit weights with bnb_4bit_quant_storage={dtype} (the compute "
                  "dtype) so that they shard like any parameter; with the default uint8 storage FSDP fails or trains "
                  "silently wrong. Planned with that storage (the same bytes); the quant states stay whole on each GPU",)
    if train.offload != "none":
        what = "parameters, gradients and the optimizer step" if train.offload == "params" else "the optimizer states and step"
        notes += (f"--offload {train.offload}: {what} on the CPU (host memory not planned)",)
    return notes


def _as_model(model: str | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else get_model(model)


def _as_gpu(gpu: str | GpuSpec) -> GpuSpec:
    return gpu if isinstance(gpu, GpuSpec) else get_gpu(gpu)


def kernels_notes(model: ModelSpec, train: TrainSpec) -> tuple[str, ...]:
    """Which kernels the plan assumes for the Gated DeltaNet, Mamba-2 and short-convolution
    layers (a note each), or a ValueError when ``--kernels fused`` is asked of a model with no
    layer that has a fused kernel."""
    from planner.memory import deltanet

    notes = ()
    path = deltanet.kernels(model, train)
    if path == "fused":
        notes += ("Gated DeltaNet layers planned with the fused kernels (flash-linear-attention's chunked gated "
                  "delta rule, causal-conv1d), what transformers runs with them installed (--kernels auto); "
                  "--kernels torch plans its torch fallbacks",)
    elif path == "torch":
        notes += ("Gated DeltaNet layers planned with transformers' torch fallbacks (torch_chunk_gated_delta_rule, "
                  "causal_conv1d_fn), what runs without flash-linear-attention and causal-conv1d",)
    mixers = [k for k in model.kinds if k.layer.mixer is not None]
    if not mixers:
        if train.kernels == "fused" and not any(k.layer.deltanet is not None for k in model.kinds):
            raise ValueError(f"--kernels fused: {model.name} has no layer with a fused kernel (the Gated DeltaNet, "
                             "Mamba-2 and short-convolution layers of Qwen3.5, Qwen3-Next, Granite-4.0-H, Nemotron-H "
                             "and LFM2 have one); use --kernels auto or torch")
        return notes
    from planner.memory.mixers import fused_refusal, kernels_path

    refusal = fused_refusal(model, train)
    if refusal and train.kernels == "fused":
        raise targets.UnsupportedMethod(f"{refusal} (use --kernels torch)")
    path = kernels_path(model, train)
    what = ("the fused kernels (mamba-ssm's mamba_split_conv1d_scan_combined, causal-conv1d's causal_conv1d_fn)"
            if path == "fused" else "transformers' torch fallback (chunked scan in torch ops, F.conv1d)")
    why = " (--kernels auto: what transformers picks with mamba-ssm / causal-conv1d installed)" \
        if train.kernels == "auto" else ""
    if refusal:  # auto, 4-bit: the torch path, the one that runs
        why = (f" (--kernels auto: {refusal}, so a step with mamba-ssm installed fails; planned without it, on the "
               "torch path)")
    return notes + (f"{', '.join(k.name for k in mixers)} layers planned with {what}{why}",)


def plan(model: str | ModelSpec, gpu: str | GpuSpec, train: TrainSpec | None = None,
         calibrations: dict | None = None, speed: dict | None = None, host: str = roofline.DEFAULT_HOST) -> Plan:
    """Predict the memory of one training step of ``train`` on ``model`` and ``gpu``.

    ``model`` and ``gpu`` are specs or catalog names (or a config.json path for the model).
    ``calibrations`` (family -> planner.memory.calibration.Calibration) replaces the runtime
    estimates; None loads them from the committed CUDA rows, {} turns them off. ``speed``
    (family -> planner.time.calibration.SpeedCalibration) does the same for the time
    model's efficiency factors. ``host``: the CPU that launches the eager ops
    (planner.time.roofline.HOSTS).
    Raises ValueError (CatalogError for names) on impossible settings.
    """
    model, gpu = _as_model(model), _as_gpu(gpu)
    train = train or TrainSpec()
    check_known(model.kinds)
    targets.check_rank(model, train)
    dtype, notes = resolve_dtype(train.dtype, gpu.bf16, gpu.name)
    notes = model.notes + notes + kernels_notes(model, train)
    if train.seq_len > model.max_position_embeddings:
        notes += (f"seq_len {train.seq_len} exceeds {model.name}'s max_position_embeddings "
                  f"{model.max_position_embeddings}",)
    if train.method == "full" and dtype == "fp16" and train.precision != "mixed":
        notes += ("full fine-tuning in fp16 needs fp32 master weights to train stably "
                  "(a GradScaler refuses fp16 gradients): consider --precision mixed",)
    elif train.modules_to_save and dtype == "fp16" and train.precision == "autocast" and not train.is_quantized:
        notes += ("modules_to_save copies an fp16 model's modules in fp16, whose gradients a GradScaler "
                  "refuses: consider --precision mixed (fp32 weights)",)
    if train.is_dora and train.precision == "mixed":
        notes += ("DoRA / QDoRA under --precision mixed: a layer's weight-norm transients with fp32 master "
                  "weights are not all modelled; over the 46 traced baseline configurations the traced peak was "
                  "0.2% above to 1.9% below this plan: check it with probe --device fake",)
    if model.vocab_size < model.intermediate_size:
        notes += (f"{model.name}'s vocabulary ({model.vocab_size}) is smaller than its MLP width "
                  f"({model.intermediate_size}): a layer's backward can then outgrow the logits, a moment the "
                  "planner does not model in full; the plan may be low (by up to 5% with a 512-token vocabulary): "
                  "check it with probe --device fake",)
    if model.eager_attention:
        why = "attention sinks" if model.traits.attention_sinks else "attention logit softcapping"
        notes += (f"{model.name} uses {why}: planned with eager attention (seq x seq probabilities kept), "
                  "not SDPA",)
    elif train.attn_implementation == "eager":
        where = ("each layer's softmax, recomputed in backward, works on seq x seq tensors (transient/attention)"
                 if train.gradient_checkpointing else
                 "it keeps the seq x seq probabilities of every layer for backward (fp32 and a 16-bit copy)")
        notes += (f"eager attention: {where}; sdpa or flash_attention_2 keep O(seq)",)
    elif train.attn_implementation == "flash_attention_2":
        notes += ("flash_attention_2 planned as the flash kernel keeps its memory (O(seq) per head), "
                  "as SDPA's flash kernel does",)
    notes += moe_notes(model, train, dtype)
    if train.is_dora and train.lora_dropout > 0 and not C.precision(train, dtype).autocast:
        notes += ("DoRA with lora_dropout and no autocast: the fp32 tensors of a layer's DoRA weight-norm "
                  "computation beside the dropped input are not all modelled; over the 29 traced baseline "
                  "configurations the traced peak was at most 0.2% above this plan",)
    if train.modules_to_save and train.method == "full":
        notes += ("full fine-tuning trains every module: modules_to_save adds nothing to it",)
    elif model.tie_word_embeddings and len(train.modules_to_save) == 2:
        notes += (f"{model.name} ties embed_tokens and lm_head: peft trains them as two independent copies "
                  "(planned so); its ensure_weight_tying=True keeps them tied",)
    notes += parallel_notes(model, gpu, train, dtype)
    step = step_memory(model, train, dtype)
    phase = step.peak_phase
    allocated = step.peak_bytes
    cal = (calibration.load() if calibrations is None else calibrations).get(gpu.family)
    if cal is None:
        allocator, context = C.allocator_reserve(allocated), gpu.cuda_context_bytes
    else:
        allocator, context = C.allocator_reserve(allocated, cal.allocator_fraction), cal.cuda_context_bytes
        notes += (cal.describe(),)
    reserved = allocated + allocator
    device_used = reserved + context
    components = dict(step.phases[phase])
    if step.paged_optimizer_bytes:
        components["optimizer/states_paged"] = step.paged_optimizer_bytes
        notes += ("paged optimizer states live in CUDA unified memory: not counted in the "
                  "allocated or device totals (the driver can page them out to host RAM)",)
    efficiency, time_note = _efficiency(gpu, dtype, speed, host)
    notes += time_note
    components["runtime/allocator"] = allocator
    components["runtime/cuda_context"] = context
    settings = {
        "batch_size": train.batch_size, "seq_len": train.seq_len, "rank": train.rank,
        "alpha": train.lora_alpha, "target_modules": list(train.target_modules), "dtype": dtype,
        "optim": train.optim, "gradient_checkpointing": train.gradient_checkpointing,
        "quant_type": train.quant_type, "double_quant": train.double_quant,
        "precision": train.precision, "lora_dropout": train.lora_dropout,
        "attn_implementation": train.attn_implementation, "kernels": train.kernels, "modules_to_save": list(train.modules_to_save),
    }
    if train.parallel:  # one-GPU plans keep exactly their settings
        settings.update(num_gpus=train.num_gpus, sharding=train.sharding, offload=train.offload)
    return Plan(
        model=model.name, gpu=gpu.name, method=train.method, settings=settings,
        components=components, phases={p: step.total(p) for p in step.phases},
        peak_allocated_bytes=allocated, peak_reserved_bytes=reserved, device_used_bytes=device_used,
        gpu_memory_bytes=gpu.memory_bytes, fits=device_used <= gpu.memory_bytes,
        headroom_bytes=gpu.memory_bytes - device_used,
        trainable_params=counts.trainable_params(model, train),
        total_params=counts.total_params(model), peak_phase=phase, peak_moment=step.peak_moment, notes=notes,
        timing_inputs=None if efficiency is None else (model, gpu, train, dtype, efficiency),
    )


def _efficiency(gpu: GpuSpec, dtype: str, speed: dict | None,
                host: str = roofline.DEFAULT_HOST) -> tuple[roofline.Efficiency | None, tuple[str, ...]]:
    """The time model's efficiency factors, calibrated for the GPU's family where CUDA rows
    exist, and the note that says which factors are used (None in fp32, with why)."""
    if dtype == "fp32":
        return None, ("no time planned in fp32: the catalog holds 16-bit peaks only",)
    cals = speed_calibration.load() if speed is None else speed
    cal = cals.get(gpu.family)
    eff = (roofline.DEFAULT.scaled(cal.factor) if cal else roofline.DEFAULT).on_host(host)
    note = (cal.describe(),) if cal else ((speed_calibration.none_note(gpu.family),) if speed is None else ())
    if gpu.sustained_fraction < 1:
        note += (f"time planned at {gpu.sustained_fraction:.0%} of {gpu.name}'s boost-clock peak: the clock a "
                 "continuous GEMM sustains under its power limit (data/gpus.json, sustained_source)",)
    if host != roofline.DEFAULT_HOST:
        note += (f"host {host}: {roofline.host_named(host).why}",)
    return eff, note
