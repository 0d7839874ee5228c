"""The baseline matrix: traced training-step peaks that the planner and CI are held to.

A baseline row is one configuration traced with the exact no-GPU tracer
(``probe --device fake``): its settings, the peak allocated bytes, the peak of each phase,
and the versions that made it. Rows live in ``data/baselines/traced.csv`` (the planner
matrix) and ``data/baselines/regression.csv`` (a small fixed set that CI re-traces).

The matrix (planner-accuracy issue): the catalog's 0.5B-8B models x every method x batch
{1, 4} x seq {512, 2048} x checkpointing {off, on} x rank {8, 64} x targets {attention
q,v ; all-linear}, and 13B / 70B under QLoRA. It is ordered by tier so that a partial run
is still a spread over models and methods: tier 1 is rank 8 on all-linear; tier 2 adds
rank 64 and the q,v targets; tier 3 the 13B and 70B QLoRA rows. Tiers 1-3 run in bf16 under
autocast; tier 4 adds the other precisions a user gets: the adapter methods in fp16 (every
GPU without bf16, the T4 among them), full fine-tuning with fp32 master weights (`mixed`,
what `plan` advises for full fine-tuning in fp16) and without autocast (`pure`), on three
models. Tier 6 varies the settings a training script sets (below); tier 7 traces one rank of several GPUs (rank 0, with torch's fake process group:
probes.parallel): three catalog models from 0.5B to 8B cut to 2 layers, every method, FSDP and
DDP, on 2, 4 and 8 GPUs, and Llama-2-70B QLoRA under FSDP; its rows carry ``num_gpus`` and
``sharding`` (1 and none for every other row). Tier 8 adds today's dense families (one catalog
model of each, cut to 2 layers at its real widths) under every method peft accepts for them, at
batch {1, 4} x seq {512, 2048} x checkpointing off / on.
"""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

import data
from planner import TrainSpec, get_model
from planner.units import PHASES

MATRIX_MODELS = ("qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "gemma-2-2b", "llama-3.2-3b", "qwen2.5-3b",
                 "phi-3-mini", "llama-2-7b", "mistral-7b", "qwen2.5-7b", "llama-3.1-8b")
LARGE_QLORA_MODELS = ("llama-2-13b", "llama-2-70b")
PRECISION_MODELS = ("qwen2.5-0.5b", "llama-3.2-1b", "llama-2-7b")
METHODS = ("full", "lora", "qlora", "dora", "qdora")
ADAPTER_METHODS = METHODS[1:]
BATCHES = (1, 4)
SEQS = (512, 2048)
ALL_LINEAR = ("all-linear",)

FIELDS = ("model", "method", "batch_size", "seq_len", "rank", "target_modules", "gradient_checkpointing",
          "dtype", "precision", "optim", "peak_allocated_bytes", "forward_bytes", "backward_bytes",
          "optimizer_bytes", "peak_phase", "torch", "transformers", "peft", "bitsandbytes",
          "lora_dropout", "attn_implementation", "modules_to_save", "num_gpus", "sharding", "quant_type", "double_quant",
          "kernels")
# Columns added after the first tables (tier 6's settings, tier 7's several GPUs), and what the
# rows made before them used: a table without some of them reads with these values.
ADDED_DEFAULTS = {"lora_dropout": "0.0", "attn_implementation": "auto", "modules_to_save": "",
                  "num_gpus": "1", "sharding": "none", "quant_type": "nf4", "double_quant": "1", "kernels": "auto"}

# A small fixed set CI re-traces in seconds: a 4-layer Llama-shaped model (hidden 256,
# GQA 8/4 heads, vocabulary 4096), every method, with and without checkpointing.
REGRESSION_CONFIG = {
    "model_type": "llama", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
    "max_position_embeddings": 2048, "tie_word_embeddings": False,
}
REGRESSION_MODEL = "regression-llama-4l"


def attention_targets(model_name: str) -> tuple[str, ...]:
    """The attention subset of the matrix: q_proj,v_proj (Phi-3's fused qkv_proj)."""
    return ("qkv_proj",) if get_model(model_name).model_type == "phi3" else ("q_proj", "v_proj")


@dataclass(frozen=True)
class Config:
    model: str
    train: TrainSpec

    def key(self) -> tuple:
        t = self.train
        return (self.model, t.method, t.batch_size, t.seq_len, t.rank if t.is_adapter else 0,
                ",".join(t.target_modules) if t.is_adapter else "", t.gradient_checkpointing, t.dtype, t.precision,
                t.lora_dropout if t.is_adapter else 0.0, t.attn_implementation,
                ",".join(t.modules_to_save) if t.is_adapter else "", t.num_gpus, t.sharding, t.optim,
                t.quant_type if t.is_quantized else "nf4", t.double_quant or not t.is_quantized, t.kernels)


def _grid(models, methods, ranks_targets, dtype="bf16", precision="autocast") -> list[Config]:
    out, seen = [], set()
    for b, s, gc, method, (rank, targets), model in itertools.product(
            BATCHES, SEQS, (False, True), methods, ranks_targets, models):
        tg = attention_targets(model) if targets == "attention" else ALL_LINEAR
        cfg = Config(model, TrainSpec(method=method, rank=rank, target_modules=tg, batch_size=b, seq_len=s,
                                      gradient_checkpointing=gc, dtype=dtype, precision=precision))
        if cfg.key() not in seen:  # full fine-tuning does not depend on rank or targets
            seen.add(cfg.key())
            out.append(cfg)
    return out


# Tier 5: one model of each architecture the table added, at its real dimensions but with
# fewer layers (the planner takes the layer count from the config, and a trace's time grows
# with it): "name@NL" is the catalog model cut to N decoder layers.
ARCHITECTURE_MODELS = ("qwen3-0.6b@4L", "gemma-3-1b@4L", "phi-4-mini@4L", "smollm3-3b@4L", "olmo-2-7b@4L",
                       "granite-3.3-8b@4L", "qwen3-30b-a3b@2L", "mixtral-8x7b@2L", "gpt-oss-20b@2L")


# Tier 7: one rank of several GPUs, catalog models from 0.5B to 8B cut to 2 layers, batch 1, seq 512.
PARALLEL_MODELS = ("qwen2.5-0.5b@2L", "llama-3.2-1b@2L", "llama-3.1-8b@2L")
PARALLEL_GPUS = (2, 4, 8)


def parallel_tier() -> list[Config]:
    """DDP under every method, FSDP under the 16-bit ones, on 2, 4 and 8 GPUs; then the 4-bit
    methods under FSDP (their weights stored in the compute dtype) on the same models, and
    Llama-2-70B QLoRA (cut to 2 layers, its real widths) with and without checkpointing."""
    out = []
    for sharding, n, method, model in itertools.product(("fsdp", "ddp"), PARALLEL_GPUS, METHODS, PARALLEL_MODELS):
        if sharding == "fsdp" and method in ("qlora", "qdora"):
            continue  # (below, traced after the 16-bit ones)
        out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=1, seq_len=512, dtype="bf16",
                                           num_gpus=n, sharding=sharding)))
    for n, method, model in itertools.product(PARALLEL_GPUS, ("qlora", "qdora"), PARALLEL_MODELS):
        out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=1, seq_len=512, dtype="bf16",
                                           num_gpus=n, sharding="fsdp")))
    for n, gc in itertools.product(PARALLEL_GPUS, (False, True)):
        out.append(Config("llama-2-70b@2L", TrainSpec(method="qlora", rank=8, batch_size=1, seq_len=512, dtype="bf16",
                                                      gradient_checkpointing=gc, num_gpus=n, sharding="fsdp")))
    return out


def supports(model_name: str, method: str) -> bool:
    """Whether peft can apply ``method`` with all-linear targets: it refuses DoRA on fused
    expert parameters, which its all-linear conversion targets on Mixtral and Qwen3-MoE."""
    view = spec_for(model_name).moe_view
    moe = view.layer.moe if view is not None else None
    return not (method in ("dora", "qdora") and moe is not None and moe.peft_converts)


def matrix() -> list[Config]:
    """The whole baseline matrix, tier by tier (see the module docstring)."""
    tier1 = _grid(MATRIX_MODELS, METHODS, [(8, "all")])
    tier2 = _grid(MATRIX_MODELS, ADAPTER_METHODS, [(64, "all"), (8, "attention"), (64, "attention")])
    tier3 = _grid(LARGE_QLORA_MODELS, ("qlora",), [(8, "all"), (64, "all")])
    # (full fine-tuning in fp16 autocast has fp16 gradients, which a GradScaler refuses: mixed)
    tier4 = (_grid(PRECISION_MODELS, ADAPTER_METHODS, [(8, "all")], dtype="fp16")
             + _grid(PRECISION_MODELS, ("full",), [(8, "all")], dtype="fp16", precision="mixed")
             + _grid(PRECISION_MODELS, ("full",), [(8, "all")], dtype="bf16", precision="pure"))
    tier5 = [c for c in _grid(ARCHITECTURE_MODELS, METHODS, [(8, "all")]) if supports(c.model, c.train.method)]
    return (tier1 + tier2 + tier3 + tier4 + tier5 + settings_tier() + parallel_tier() + dense_families_tier()
            + moe_families_tier() + hybrid_families_tier() + deltanet_families_tier() + eager_long_tier())


# Tier 8: today's dense families, one catalog model of each cut to 2 layers at its real widths
# (OLMo-3, EXAONE-4 and Command-R7B to 4: three sliding layers and a full one; Gemma 4 E2B to 10: the fewest
# of its 4:1 pattern whose last half, KV-shared, holds both attention types, so that every kind
# is traced: sliding, full, and both KV-shared).
DENSE_FAMILY_MODELS = ("starcoder2-3b@2L", "olmo-3-7b@4L", "glm-4-9b-0414@2L", "apertus-8b@2L", "exaone-4.0-32b@4L",
                       "seed-oss-36b@2L", "gemma-4-e2b@10L", "command-r7b@4L", "ministral-3-3b@2L")


def dense_families_tier() -> list[Config]:
    return [c for c in _grid(DENSE_FAMILY_MODELS, METHODS, [(8, "all")]) if supports(c.model, c.train.method)]


# Tier 6: the settings a training script sets, on an untied and a tied model at their real
# dimensions, cut to 4 layers: LoRA dropout 0.05 and 0.1, eager attention from 512 to 4096
# tokens, and embed_tokens / lm_head trained whole (peft's modules_to_save).
SETTINGS_MODELS = ("llama-3.1-8b@4L", "qwen2.5-1.5b@4L")


def settings_tier() -> list[Config]:
    out = []
    for model, gc, method, p, seq in itertools.product(SETTINGS_MODELS, (False, True), ("lora", "qlora", "dora"),
                                                       (0.05, 0.1), SEQS):
        out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=4, seq_len=seq, gradient_checkpointing=gc,
                                           dtype="bf16", lora_dropout=p)))
    for model, gc, method, seq in itertools.product(SETTINGS_MODELS, (False, True), ("full", "lora", "qlora", "dora"),
                                                    (512, 1024, 2048, 4096)):
        out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=1, seq_len=seq, gradient_checkpointing=gc,
                                           dtype="bf16", attn_implementation="eager")))
    for model, gc, method, modules, b in itertools.product(
            SETTINGS_MODELS, (False, True), ("lora", "qlora", "dora"), (("lm_head",), ("embed_tokens", "lm_head")),
            BATCHES):
        out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=b, seq_len=2048, gradient_checkpointing=gc,
                                           dtype="bf16", modules_to_save=modules)))
    return out


def regression_configs() -> list[Config]:
    return [Config(REGRESSION_MODEL, TrainSpec(method=m, rank=8, batch_size=2, seq_len=128,
                                               gradient_checkpointing=gc, dtype="bf16"))
            for m in METHODS for gc in (False, True)]


def regression_spec():
    from planner.model.catalog import model_from_config

    return model_from_config(dict(REGRESSION_CONFIG), REGRESSION_MODEL)


def spec_for(model: str):
    """The spec of a baseline's model: the regression model, a catalog model, or a catalog
    model cut to fewer layers ("name@NL")."""
    if model == REGRESSION_MODEL:
        return regression_spec()
    name, _, layers = model.partition("@")
    if not layers:
        return get_model(model)
    return with_layers(get_model(name), int(layers.rstrip("L")), model)


def with_layers(spec, layers: int, name: str):
    """``spec`` with ``layers`` decoder layers (per-layer lists in its config cut to match; dense
    first layers, first_k_dense_replace, at most all but one, so that the cut keeps a layer of
    each kind: DeepSeek-V3's 3 dense layers cut to 2 layers are 1 dense and 1 MoE)."""
    from planner.model.catalog import model_from_config

    config = spec.hf_config()
    total = config["num_hidden_layers"]
    config["num_hidden_layers"] = layers
    if isinstance(config.get("first_k_dense_replace"), int) and layers > 1:
        config["first_k_dense_replace"] = min(config["first_k_dense_replace"], layers - 1)
    keep = _kept_layers(spec, layers)
    for key in ("layer_types", "no_rope_layers", "layers_block_type"):
        if isinstance(config.get(key), list):
            config[key] = [config[key][i] for i in keep]
    if isinstance(config.get("hybrid_override_pattern"), str):
        config["hybrid_override_pattern"] = "".join(config["hybrid_override_pattern"][i] for i in keep)
    if config.get("num_kv_shared_layers"):
        # Gemma 4's KV-shared layers end the model: the cut keeps their share, rounded down, and
        # fewer where a shared layer's attention type would have no earlier layer (the last
        # layer is full attention, as transformers forces it)
        types = (config.get("layer_types") or [])[:-1] + ["full_attention"]
        shared = config["num_kv_shared_layers"] * layers // total
        while shared and set(types[layers - shared:]) - set(types[:layers - shared]):
            shared -= 1
        config["num_kv_shared_layers"] = shared
    return model_from_config(config, name, spec.hf_id)


def _kept_layers(spec, layers: int) -> list[int]:
    """The layers a cut keeps: the first ``layers``; for a hybrid (kinds whose modules differ:
    Mamba-2, short-convolution, attention-only, MLP-only layers) the first layer of each kind,
    then the next ones in order, so that a few layers hold every kind."""
    if len({k.layer.linears for k in spec.kinds}) < 2:
        return list(range(layers))
    keep = sorted(k.indices[0] for k in spec.kinds)[:layers]
    keep += [i for i in range(spec.num_layers) if i not in keep][:layers - len(keep)]
    return sorted(keep)


def row_from_trace(cfg: Config, measurement, versions: dict) -> dict:
    t = cfg.train
    phases = measurement.phase_peaks
    return {
        "model": cfg.model, "method": t.method, "batch_size": t.batch_size, "seq_len": t.seq_len,
        "rank": t.rank if t.is_adapter else 0,
        "target_modules": ",".join(t.target_modules) if t.is_adapter else "",
        "gradient_checkpointing": int(t.gradient_checkpointing), "dtype": t.dtype, "precision": t.precision,
        "optim": t.optim, "peak_allocated_bytes": measurement.peak_allocated_bytes,
        "lora_dropout": t.lora_dropout if t.is_adapter else 0.0, "attn_implementation": t.attn_implementation,
        "modules_to_save": ",".join(t.modules_to_save) if t.is_adapter else "",
        **{f"{p}_bytes": phases.get(p) for p in PHASES}, "peak_phase": measurement.peak_phase,
        **{k: versions.get(f"{k}_version", "") for k in ("torch", "transformers", "peft", "bitsandbytes")},
        "num_gpus": t.num_gpus, "sharding": t.sharding,
        "quant_type": t.quant_type if t.is_quantized else "nf4", "double_quant": int(t.double_quant or not t.is_quantized),
        "kernels": t.kernels,
    }


def config_of(row: dict) -> Config:
    """The configuration a baseline row was traced with (its cells read as a results table's,
    TrainSpec.from_record; a full fine-tuning row's rank is not a setting it ran with: the default)."""
    cells = {**row, "rank": "" if row["method"] == "full" else row["rank"]}
    return Config(row["model"], TrainSpec.from_record({k: str(v) for k, v in cells.items()}))


MEMORY_TABLES = ("traced.csv", "random.csv")  # the tables the memory gate holds the planner to


def memory_rows() -> list[dict]:
    """The rows of every table the memory gate holds the planner to, each with its ``table``."""
    return [{**row, "table": name} for name in MEMORY_TABLES for row in load(name)]


def path(name: str) -> Path:
    return data.path("baselines", name)


class BaselineError(ValueError):
    """A baseline file that is missing, malformed or of another schema."""


LEGACY_FIELDS = tuple(f for f in FIELDS if f not in ADDED_DEFAULTS)  # the first tables' columns


def _known_header(header: tuple) -> bool:
    """FIELDS, or FIELDS without some of the columns added later (in order)."""
    return set(LEGACY_FIELDS) <= set(header) and header == tuple(f for f in FIELDS if f in header)


def load(name: str) -> list[dict]:
    """Rows of a committed baseline file, with the integer fields as ints."""
    p = path(name) if not Path(name).is_absolute() else Path(name)
    try:
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            if not _known_header(tuple(reader.fieldnames or ())):
                raise BaselineError(f"{p.name}: not a baseline table (columns {reader.fieldnames})")
            rows = [{**ADDED_DEFAULTS, **row} for row in reader]
    except OSError as exc:
        raise BaselineError(f"{p}: cannot read the baseline ({exc.strerror})") from None
    for row in rows:
        for k in ("peak_allocated_bytes", *(f"{ph}_bytes" for ph in PHASES)):
            row[k] = int(row[k])
    return rows


def _upgrade(p: Path, header: tuple) -> None:
    """Rewrite an older table with every column (FIELDS), its rows given the added columns' defaults."""
    with open(p, newline="") as f:
        rows = [{**ADDED_DEFAULTS, **row} for row in csv.DictReader(f)]
    with open(p, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def append(row: dict, p: Path) -> None:
    """Append one row (creating the file with its header)."""
    new = not p.exists()
    if not new:
        with open(p, newline="") as f:
            header = tuple(next(csv.reader(f), ()))
        if header != FIELDS and _known_header(header):
            dropped = [k for k in FIELDS if k not in header and str(row[k]) != ADDED_DEFAULTS[k]]
            if not dropped:  # an older table, and the row holds only defaults in its missing columns
                row = {k: v for k, v in row.items() if k in header}
                with open(p, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=header, lineterminator="\n").writerow(row)
                return
            _upgrade(p, header)  # the row needs a newer column: the table takes every column first
    with open(p, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


# ---------------------------------------------------------------- tier 9: issue 18's mixture-of-experts families
# Every new MoE family under every method peft accepts for it with all-linear targets (DoRA is
# refused where all-linear reaches fused experts), batch {1, 4} x seq {512, 2048} x checkpointing,
# cut to 2 layers at real widths (every layer of Qwen1.5-MoE, OLMoE and Phi-3.5-MoE is alike;
# GLM-4.5's and DeepSeek-V3's cuts hold a dense layer and a MoE layer, see with_layers);
# Llama 4 cut to four layers (Scout: three chunked RoPE layers and a full no-RoPE one; Maverick:
# dense and MoE layers, RoPE and no-RoPE); Gemma-4-26B-A4B cut to two layers (a sliding one and the
# full one transformers makes the last), its dense MLP beside the experts in each
MOE_FAMILY_MODELS = ("qwen1.5-moe-a2.7b@2L", "olmoe-1b-7b@2L", "llama-4-scout@4L", "llama-4-maverick@4L",
                     "phi-3.5-moe@2L", "glm-4.5-air@2L", "glm-4.5@2L", "deepseek-v3@2L", "kimi-k2@2L",
                     "gemma-4-26b-a4b@2L",
                     "deepseek-v3.2-exp@2L")


def moe_families_tier() -> list[Config]:
    return [c for c in _grid(MOE_FAMILY_MODELS, METHODS, [(8, "all")]) if supports(c.model, c.train.method)]



# ---------------------------------------------------------------- tier 10: issue 19's hybrid families
# Granite-4.0-H (Mamba-2 and attention layers, experts and a shared MLP), Nemotron-H (Mamba-2,
# MLP-only and attention-only layers) and LFM2 (short-convolution and attention layers), each
# cut to layers that hold every kind of it (:func:`with_layers`), under every method, on both
# kernel paths (torch: transformers' torch fallback; fused: mamba-ssm / causal-conv1d, traced by
# probes.mixer_kernels), checkpointing off / on, seq {512, 2048, 8192}, batch 1. Nemotron-H's
# adapters name their targets: peft refuses LoRA on its Mamba out_proj, which all-linear reaches.
HYBRID_FAMILY_MODELS = ("granite-4.0-h-tiny@2L", "nemotron-h-8b@3L", "lfm2-1.2b@2L")
HYBRID_SEQS = (512, 2048, 8192)
NEMOTRON_H_TARGETS = ("in_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


def hybrid_families_tier() -> list[Config]:
    out = []
    for seq, gc, kernels, method, model in itertools.product(HYBRID_SEQS, (False, True), ("torch", "fused"), METHODS,
                                                             HYBRID_FAMILY_MODELS):
        if kernels == "fused" and method in ("qlora", "qdora") and not model.startswith("lfm2"):
            continue  # a 4-bit out_proj cannot reach the fused Mamba kernel (planner.memory.mixers.fused_refusal)
        targets = NEMOTRON_H_TARGETS if model.startswith("nemotron-h") else ALL_LINEAR
        out.append(Config(model, TrainSpec(method=method, rank=8, target_modules=targets, batch_size=1, seq_len=seq,
                                           gradient_checkpointing=gc, dtype="bf16", kernels=kernels)))
    return out


# ---------------------------------------------------------------- tier 11: issue 19's Gated DeltaNet hybrids
# Qwen3.5 (dense), Qwen3.5-MoE and Qwen3-Next cut to 4 layers at real widths (three DeltaNet layers
# and a gated full-attention one, the first four of their layer_types) under every method peft
# accepts with all-linear, on both kernel paths (TrainSpec.kernels: the torch fallbacks and the
# fused kernels' stand-ins, probes.deltanet_kernels), checkpointing off / on, batch 1 x seq
# {512, 2048, 8192}: the torch path's chunk tables grow with the sequence, the fused one's do not.
DELTANET_FAMILY_MODELS = ("qwen3.5-27b@4L", "qwen3.5-35b-a3b@4L", "qwen3-next-80b-a3b@4L")
DELTANET_SEQS = (512, 2048, 8192)


def deltanet_families_tier() -> list[Config]:
    out = []
    for seq, gc, kernels, method, model in itertools.product(DELTANET_SEQS, (False, True), ("torch", "fused"), METHODS,
                                                              DELTANET_FAMILY_MODELS):
        if supports(model, method):
            out.append(Config(model, TrainSpec(method=method, rank=8, batch_size=1, seq_len=seq,
                                               gradient_checkpointing=gc, dtype="bf16", kernels=kernels)))
    return out


# ---------------------------------------------------------------- tier 12: eager attention at long sequences
# The models whose attention runs eagerly whatever the script asks (gpt-oss: sinks; Gemma-2: logit
# softcapping), cut to 2 layers at real widths (a sliding and a full layer: both eager masks), under
# full fine-tuning, LoRA and QLoRA, checkpointing off / on, batch 1 x seq {4096, 8192}: the seq x seq
# score tensors, and with checkpointing the recomputation reaching the softmax, are the peaks.
EAGER_LONG_MODELS = ("gpt-oss-20b@2L", "gemma-2-2b@2L")
EAGER_LONG_SEQS = (4096, 8192)


def eager_long_tier() -> list[Config]:
    return [Config(model, TrainSpec(method=method, rank=8, batch_size=1, seq_len=seq, gradient_checkpointing=gc,
                                    dtype="bf16"))
            for model, seq, gc, method in itertools.product(EAGER_LONG_MODELS, EAGER_LONG_SEQS, (False, True),
                                                            ("full", "lora", "qlora"))]
