"""What fits: the largest batch and sequence that fit, and which method to use.

The search relies on the plan being monotone in batch size and sequence length (a
property test checks it), so a doubling-then-bisection search is exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from planner.model.catalog import get_gpu, gpu_names
from planner.plan import Plan, plan
from planner.model.specs import OFFLOADABLE, GpuSpec, ModelSpec, TrainSpec
from planner.units import GIB

COMFORT_FRACTION = 0.2  # full fine-tuning is "comfortable" with 20% of the GPU free
MAX_BATCH_SEARCH = 1 << 16


def _largest(fits: Callable[[int], bool], upper: int) -> int:
    """Largest n in [1, upper] with fits(n), for a monotone predicate; 0 if fits(1) is false."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper + 1)  # fits(lo) holds, fits(hi) fails or hi is past the bound
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_batch_size(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, upper: int = MAX_BATCH_SEARCH,
                   calibrations: dict | None = None) -> int:
    """Largest batch size (at train.seq_len) whose device-used total fits the GPU; 0 if none."""
    return _largest(lambda b: plan(model, gpu, train.with_(batch_size=b), calibrations).fits, upper)


def max_seq_len(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, upper: int | None = None,
                calibrations: dict | None = None) -> int:
    """Largest sequence length (at train.batch_size), up to the model's context; 0 if none."""
    bound = upper or model.max_position_embeddings
    return _largest(lambda s: plan(model, gpu, train.with_(seq_len=s), calibrations).fits, bound)


@dataclass(frozen=True)
class Recommendation:
    method: str | None  # None: nothing fits with these settings
    text: str


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _speed(by: dict[str, Plan], method: str, reference: str) -> str:
    """"about 0.7x LoRA's speed": planned tokens per second of ``method`` over ``reference``'s,
    or "" where either has no planned time."""
    a, b = by.get(method), by.get(reference)
    if a is None or b is None or not a.tokens_per_second or not b.tokens_per_second:
        return ""
    name = {"lora": "LoRA", "qlora": "QLoRA", "rslora": "rsLoRA", "full": "full fine-tuning"}.get(reference, reference)
    return f"about {a.tokens_per_second / b.tokens_per_second:.2f}x {name}'s speed"


def recommend(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, plans: list[Plan]) -> Recommendation:
    """Which method to use on this GPU, following the methods' decision logic.

    QLoRA when memory-bound (Dettmers et al. 2023), LoRA when it fits (Hu et al. 2021),
    DoRA when it fits and quality matters (Liu et al. 2024: better accuracy at the same
    rank, at the cost of a slower step and more memory), full fine-tuning only when it fits
    with at least 20% of the GPU to spare. Where the plans have a time, the text gives each
    alternative's planned speed against the method it replaces (planner.time.timing).
    """
    by = {p.method: p for p in plans}
    mem = _gib(gpu.memory_bytes)
    fit = {m for m, p in by.items() if p.fits}
    parts: list[str] = []
    choice = None
    if "full" in by and by["full"].fits and by["full"].headroom_bytes >= COMFORT_FRACTION * gpu.memory_bytes:
        choice = "full"
        speed = _speed(by, "lora", "full")
        ratio = by["lora"].tokens_per_second / by["full"].tokens_per_second if speed else None
        lora_says = ("otherwise LoRA keeps checkpoints small" + (f" and trains at {speed}" if speed else "")
                     if ratio is None or ratio < 1 else
                     f"otherwise LoRA trains faster ({speed}) and keeps checkpoints small")
        parts.append(f"Full fine-tuning fits comfortably ({_gib(by['full'].device_used_bytes)} of {mem}): "
                     f"use it when the task needs every weight to move; {lora_says}.")
    lora = next((m for m in ("lora", "rslora") if m in fit), None)
    if lora:
        choice = choice or lora
        parts.append(f"{'LoRA' if lora == 'lora' else 'rsLoRA'} fits ({_gib(by[lora].device_used_bytes)} of {mem}, "
                     f"r={train.rank}, {','.join(train.target_modules)}).")
        if "dora" in fit:
            speed = _speed(by, "dora", lora)
            parts.append(f"DoRA fits too ({_gib(by['dora'].device_used_bytes)}): prefer it when quality "
                         f"matters, at {speed or 'the cost of a slower step'}.")
        elif "dora" in by:
            parts.append(f"DoRA does not fit ({_gib(by['dora'].device_used_bytes)} needed): "
                         "its dense weight-norm computation costs memory LoRA does not need.")
    elif "qlora" in fit:
        choice = "qlora"
        parts.append(f"Memory-bound: use QLoRA ({train.quant_type.upper()}"
                     f"{', double quant' if train.double_quant else ''}), "
                     f"{_gib(by['qlora'].device_used_bytes)} of {mem}.")
        if "lora" in by:
            speed = _speed(by, "qlora", "lora")
            parts.append((f"It runs at {speed}; " if speed else "")
                         + f"16-bit LoRA needs {_gib(by['lora'].device_used_bytes)}.")
        if "qdora" in fit:
            speed = _speed(by, "qdora", "qlora")
            parts.append(f"QDoRA fits too ({_gib(by['qdora'].device_used_bytes)}): prefer it when quality matters"
                         + (f", at {speed}." if speed else "."))
    elif fit:
        choice = sorted(fit, key=lambda m: by[m].device_used_bytes)[0]
        parts.append(f"Of the methods planned, {choice} fits ({_gib(by[choice].device_used_bytes)} of {mem}).")
    if choice is not None and train.parallel:
        parts.append(_parallel_fit(model, gpu, train.with_(method=choice), by[choice]))
    if choice is None:
        parts.append(_nothing_fits(model, gpu, train, by))
    elif not train.gradient_checkpointing and by[choice].headroom_bytes < 0.1 * gpu.memory_bytes:
        parts.append("Headroom is thin: gradient checkpointing would leave more room for longer sequences.")
    return Recommendation(choice, " ".join(parts))


METHOD_LABELS = {"full": "Full fine-tuning", "lora": "LoRA", "rslora": "rsLoRA", "qlora": "QLoRA", "dora": "DoRA",
                 "qdora": "QDoRA"}


def _parallel_fit(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, planned: Plan) -> str:
    """"LoRA fits 2 x rtx4090 with FSDP up to batch 3 per GPU (global 6)": the chosen method on
    every rank, with the largest per-GPU batch at this sequence length."""
    from planner.plan import SHARDING_NAMES

    batch = max_batch_size(model, gpu, train)
    return (f"{METHOD_LABELS[train.method]} fits {train.num_gpus} x {gpu.name} with "
            f"{SHARDING_NAMES[train.sharding]} up to batch {batch} per GPU (global {batch * train.num_gpus}) "
            f"at seq {train.seq_len}; {_gib(planned.device_used_bytes)} per GPU at batch {train.batch_size}.")


def _nothing_fits(model: ModelSpec, gpu: GpuSpec, train: TrainSpec, by: dict[str, Plan]) -> str:
    """Advice when no planned method fits: checkpointing, a shorter sequence, a larger GPU."""
    method = min(by, key=lambda m: by[m].device_used_bytes)  # the least memory-hungry planned method
    tips = [f"Nothing planned fits {gpu.name} ({_gib(gpu.memory_bytes)}) at batch {train.batch_size}, "
            f"seq {train.seq_len}; {method} needs {_gib(by[method].device_used_bytes)}."]
    base = train.with_(method=method)
    if not train.gradient_checkpointing:
        gc = plan(model, gpu, base.with_(gradient_checkpointing=True))
        if gc.fits:
            return " ".join(tips + [f"With gradient checkpointing {method} fits ({_gib(gc.device_used_bytes)})."])
        base = base.with_(gradient_checkpointing=True)
    if train.batch_size == 1:
        seq = max_seq_len(model, gpu, base)
        if seq:
            tips.append(f"{method} with checkpointing fits up to seq {seq}.")
    else:
        batch = max_batch_size(model, gpu, base)
        if batch:
            tips.append(f"{method} with checkpointing fits up to batch {batch}.")
    offloads = OFFLOADABLE.get(train.sharding, ())
    if train.offload == "none" and offloads:
        off = plan(model, gpu, base.with_(offload=offloads[-1]))
        if off.fits:
            also = " and checkpointing" if base.gradient_checkpointing and not train.gradient_checkpointing else ""
            tips.append(f"With --offload {offloads[-1]}{also} {method} fits ({_gib(off.device_used_bytes)} per GPU).")
    bigger = _smallest_gpu_that_fits(model, base.with_(gradient_checkpointing=train.gradient_checkpointing))
    if bigger:
        count = f"{train.num_gpus} x " if train.parallel else ""
        tips.append(f"The smallest catalog GPU where {method} fits as asked is {count}{bigger.name} "
                    f"({_gib(bigger.memory_bytes)}).")
    return " ".join(tips)


def _smallest_gpu_that_fits(model: ModelSpec, train: TrainSpec) -> GpuSpec | None:
    gpus = sorted((get_gpu(n) for n in gpu_names()), key=lambda g: g.memory_bytes)
    return next((g for g in gpus if plan(model, g, train).fits), None)
