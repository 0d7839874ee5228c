"""The random tier of baselines: settings drawn across the whole flag space.

The matrix tiers vary a few settings at a time around the defaults; the planner is exact
there and was found up to 21% off outside them (``--precision mixed`` with adapters). This
tier draws every setting at once with Hypothesis, seeded (``derandomize``), so the same
Hypothesis version draws the same list and ``benchmarks/make_baselines.py --set random`` can
be stopped and resumed:

- every method, dtype (bf16, fp16, fp32) and precision scheme (autocast, pure, mixed);
- checkpointing, LoRA dropout, the attention implementation, the optimizer (the ones a CPU
  trace can run: AdamW foreach and fused, SGD), ``modules_to_save``;
- quant type and double quantization (4-bit methods), targets (all-linear, or a subset of
  the layer's Linear names), rank, batch and sequence;
- one rank of 2 or 4 GPUs under FSDP or DDP, for about one draw in five.

Models: one catalog model of every architecture, at its real widths, cut to 2 decoder
layers (``name@2L``). Today's families (:data:`FAMILY_MODELS`, cut to the layers that hold
every kind) are drawn model by model, :data:`FAMILY_DRAWS` each with a seed of the model's
name, so that a family added later leaves every earlier draw as it was. A draw the probe refuses (fp16 autocast with fp16 trainable weights,
which a GradScaler cannot unscale; DoRA on fused experts, which peft refuses) is dropped, as
is a draw the planner's settings refuse (``TrainSpec`` raises).
"""
from __future__ import annotations

from planner import TrainSpec

# one catalog model of every model_type the table knows, cut to 2 layers at real widths
RANDOM_MODELS = ("qwen2.5-0.5b@2L", "llama-3.2-1b@2L", "llama-3.1-8b@2L", "mistral-7b@2L", "gemma-2-2b@2L",
                 "phi-3-mini@2L", "phi-4-mini@2L", "qwen3-0.6b@2L", "gemma-3-1b@2L", "smollm3-3b@2L",
                 "olmo-2-7b@2L", "granite-3.3-8b@2L", "qwen3-30b-a3b@2L", "mixtral-8x7b@2L", "gpt-oss-20b@2L")
# today's families, one catalog model each (Llama 4, OLMo-3 and EXAONE-4 at 4 layers: every kind;
# GLM-4.5 and DeepSeek-V3 at 2: a dense and a MoE layer; the hybrids at 2: a mixer and attention;
# Gemma-4-26B-A4B at 2: a sliding and a full layer)
FAMILY_MODELS = ("starcoder2-3b@2L", "olmo-3-7b@4L", "glm-4-9b-0414@2L", "apertus-8b@2L", "exaone-4.0-32b@4L",
                 "seed-oss-36b@2L", "qwen1.5-moe-a2.7b@2L", "olmoe-1b-7b@2L", "llama-4-scout@4L", "phi-3.5-moe@2L",
                 "glm-4.5-air@2L", "deepseek-v3@2L", "granite-4.0-h-tiny@2L", "lfm2-1.2b@2L", "command-r7b@4L",
                 "ministral-3-3b@2L", "gemma-4-26b-a4b@2L",
                 "deepseek-v3.2-exp@2L")
FAMILY_DRAWS = 12  # per model, before refused draws are dropped
RANDOM_METHODS = ("full", "lora", "rslora", "qlora", "dora", "qdora")
RANDOM_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd")  # 8-bit / paged: CUDA only
RANDOM_SAVED = ((), ("lm_head",), ("embed_tokens",), ("embed_tokens", "lm_head"))
SIZE = 460  # draws; duplicates and refused draws are dropped (at least 300 remain)


def _strategy(models: tuple[str, ...] = RANDOM_MODELS):
    from hypothesis import strategies as st

    from .baselines import spec_for

    @st.composite
    def draw(d):
        model = d(st.sampled_from(models))
        names = spec_for(model).all_linear_names
        method = d(st.sampled_from(RANDOM_METHODS))
        targets = d(st.one_of(st.just(("all-linear",)),
                              st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)
                              .map(lambda t: tuple(n for n in names if n in t))))
        parallel = d(st.sampled_from(((1, "none"),) * 4 + ((2, "fsdp"), (4, "fsdp"), (2, "ddp"), (4, "ddp"))))
        return model, dict(
            method=method, rank=d(st.sampled_from((4, 8, 16, 32, 64))), target_modules=targets,
            batch_size=d(st.integers(1, 4)), seq_len=64 * d(st.integers(1, 32)),
            gradient_checkpointing=d(st.booleans()), dtype=d(st.sampled_from(("bf16", "bf16", "fp16", "fp32"))),
            precision=d(st.sampled_from(("autocast", "pure", "mixed"))), optim=d(st.sampled_from(RANDOM_OPTIMIZERS)),
            quant_type=d(st.sampled_from(("nf4", "fp4"))), double_quant=d(st.booleans()),
            lora_dropout=d(st.sampled_from((0.0, 0.0, 0.05, 0.1))),
            attn_implementation=d(st.sampled_from(("auto", "sdpa", "eager", "flash_attention_2"))),
            modules_to_save=d(st.sampled_from(RANDOM_SAVED)) if parallel[0] == 1 else (),
            num_gpus=parallel[0], sharding=parallel[1])

    return draw()


def refused(model: str, train: TrainSpec) -> str | None:
    """Why the probe would refuse these settings, or None."""
    from .baselines import spec_for, supports

    if not supports(model, train.method):
        return "peft refuses DoRA on fused expert parameters"
    from planner.model.targets import UnsupportedMethod, check_gradient_reached

    try:
        check_gradient_reached(spec_for(model), train)
    except UnsupportedMethod as exc:  # adapters inside DeepSeek-V3.2's indexer only: backward fails
        return str(exc)
    if train.attn_implementation == "eager" and any(k.layer.mla is not None for k in spec_for(model).kinds):
        return "eager attention with multi-head latent attention is not planned (the planner refuses it)"
    if train.lora_dropout > 0 and train.is_adapter and spec_for(model).moe is not None:
        from planner.model.targets import UnsupportedMethod, targeted_parameters

        try:
            targeted_parameters(spec_for(model), train)
        except UnsupportedMethod as exc:  # LoRA dropout on fused experts (peft's ParamWrapper)
            return str(exc)
    trained_fp16 = train.dtype == "fp16" and train.precision == "autocast" and (
        train.method == "full" or (train.modules_to_save and not train.is_quantized))
    if trained_fp16:
        return "fp16 autocast with fp16 trainable weights (a GradScaler cannot unscale them)"
    if train.dtype == "fp32" and train.precision != "pure":
        return "fp32 has no autocast (use pure)"
    return None


def draws() -> list:
    """The tier's configurations, in draw order (``validate.baselines.Config``): the first
    draws over :data:`RANDOM_MODELS`, then today's families model by model."""
    return _first_draws() + [c for model in FAMILY_MODELS for c in family_draws(model)]


def family_draws(model: str) -> list:
    """:data:`FAMILY_DRAWS` draws on one model, seeded by its name."""
    import zlib

    from hypothesis import HealthCheck, given, seed, settings

    from .baselines import Config

    out, seen = [], set()

    @seed(zlib.crc32(model.encode()))
    @settings(max_examples=FAMILY_DRAWS, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_strategy((model,)))
    def collect(drawn):
        _keep(drawn, out, seen, Config)

    collect()
    return out


def _keep(drawn, out: list, seen: set, Config) -> None:
    model, fields = drawn
    if not fields["method"] in ("qlora", "qdora"):
        fields = {**fields, "quant_type": "nf4", "double_quant": True}
    try:
        train = TrainSpec(**fields)
    except ValueError:
        return
    cfg = Config(model, train)
    if refused(model, train) is None and cfg.key() not in seen:
        seen.add(cfg.key())
        out.append(cfg)


def _first_draws() -> list:
    """The first draws, over :data:`RANDOM_MODELS` (data/baselines/random.csv's rows)."""
    from hypothesis import HealthCheck, given, settings

    from .baselines import Config

    out, seen = [], set()

    # collect's body repeats _keep's on purpose: derandomize seeds Hypothesis from a digest of the
    # test function's source, so calling _keep here would draw other settings than the 308 rows of
    # data/baselines/random.csv (checked: 140 of them drawn again)
    @settings(max_examples=SIZE, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_strategy())
    def collect(drawn):
        model, fields = drawn
        if not fields["method"] in ("qlora", "qdora"):
            fields = {**fields, "quant_type": "nf4", "double_quant": True}
        try:
            train = TrainSpec(**fields)
        except ValueError:
            return
        cfg = Config(model, train)
        if refused(model, train) is None and cfg.key() not in seen:
            seen.add(cfg.key())
            out.append(cfg)

    collect()
    return out
