"""``MemoryPlanCallback``: the planner inside a user's own ``transformers.Trainer`` run.

    from probes.callback import MemoryPlanCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[MemoryPlanCallback(gpu="a10g", seq_len=2048, results="rows.csv")])

- ``on_train_begin``: works out the plan's settings from the model (its peft config, 4-bit
  quantization config, weight dtype, attention implementation) and the TrainingArguments
  (batch per device, checkpointing, bf16/fp16, optimizer, FSDP / DeepSpeed / several
  processes), with the sequence length it is given or that of the first training batch. It
  logs the plan, and warns with the breakdown, before the first step, when the run will not
  fit.
- after ``measure_steps`` optimizer steps (default 2: the first creates the optimizer states)
  on CUDA it reads torch.cuda's peak allocated and reserved bytes and the process's device
  memory from NVML, and adds planned, measured and their ratio to the Trainer's logs under
  ``ftmem/`` (the console and ``state.log_history``; W&B and TensorBoard too when the callback
  runs before them: :meth:`MemoryPlanCallback.install`). With ``results`` it appends a results
  row (the probe table's schema 2, device ``cuda``, run_id ``trainer-...``) to that file.
  Without CUDA only the planned figures are logged.
"""
from __future__ import annotations

import logging
import uuid
import warnings

from transformers import TrainerCallback

from planner import TrainSpec, get_gpu, plan
from planner.model.catalog import model_from_config
from planner.model.specs import ALL_LINEAR, OPTIMIZERS

LOG = logging.getLogger("ftmem")
GIB = 1 << 30
OPTIM_NAMES = {"adamw_hf": "adamw_torch", "adamw": "adamw_torch", "adamw_bnb_8bit": "adamw_8bit"}


def _dtype_name(dtype) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), "fp32")


def infer_settings(model, args, seq_len: int) -> tuple:
    """(ModelSpec, TrainSpec, notes) of a Trainer run, from the model and TrainingArguments."""
    notes: list[str] = []
    peft_config = getattr(model, "peft_config", None)
    base = model.get_base_model() if peft_config and hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    name = config.get("_name_or_path") or config.get("model_type", "model")
    quant = config.get("quantization_config") or {}
    spec = model_from_config({k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}, name)
    four = bool(getattr(base, "is_loaded_in_4bit", False) or quant.get("load_in_4bit"))
    weights = _dtype_name(getattr(base, "dtype", None))
    amp = "bf16" if args.bf16 else "fp16" if args.fp16 else None
    if four:  # bitsandbytes' compute dtype, unless autocast runs the matmuls
        compute = str(quant.get("bnb_4bit_compute_dtype", "float32"))
        dtype = amp or ("bf16" if "bfloat16" in compute else "fp16" if "float16" in compute else "fp32")
        precision = "autocast"
    elif amp is None:
        dtype, precision = weights, "pure" if weights != "fp32" else "autocast"
    else:
        dtype, precision = amp, "mixed" if weights == "fp32" else "autocast"
    kw = dict(batch_size=args.per_device_train_batch_size, seq_len=seq_len,
              gradient_checkpointing=bool(args.gradient_checkpointing), dtype=dtype, precision=precision)
    optim = str(getattr(args.optim, "value", args.optim))
    optim = OPTIM_NAMES.get(optim, optim)
    if optim not in OPTIMIZERS:
        notes.append(f"optimizer {optim!r} is not modelled: planned with adamw_torch")
        optim = "adamw_torch"
    kw["optim"] = optim
    attn = getattr(base.config, "_attn_implementation", None) or "auto"
    kw["attn_implementation"] = attn if attn in ("sdpa", "eager", "flash_attention_2") else "auto"
    if peft_config:
        lora = peft_config.get("default") or next(iter(peft_config.values()))
        targets = lora.target_modules
        kw.update(rank=lora.r, alpha=float(lora.lora_alpha), lora_dropout=float(lora.lora_dropout or 0.0),
                  target_modules=(ALL_LINEAR,) if targets == ALL_LINEAR or targets is None else
                  tuple(sorted(targets)) if not isinstance(targets, str) else (targets,),
                  modules_to_save=tuple(m for m in (lora.modules_to_save or ()) if m in ("embed_tokens", "lm_head")))
        method = "dora" if lora.use_dora else "rslora" if lora.use_rslora else "lora"
        method = {"lora": "qlora", "rslora": "qlora", "dora": "qdora"}[method] if four else method
        if four:
            kw.update(quant_type=quant.get("bnb_4bit_quant_type", "nf4"),
                      double_quant=bool(quant.get("bnb_4bit_use_double_quant", False)))
    else:
        method = "full"
    world = getattr(args, "world_size", 1) or 1
    if world > 1:
        sharding = "fsdp" if args.fsdp else "zero3" if args.deepspeed else "ddp"
        if args.deepspeed:
            notes.append("DeepSpeed: planned as ZeRO-3 (the stage is in its config)")
        kw.update(num_gpus=world, sharding=sharding)
    return spec, TrainSpec(method=method, **kw), tuple(notes)


def breakdown(p) -> str:
    """The plan's components, GiB, one per line (the warning's body)."""
    rows = [f"  {k:<32}{v / GIB:8.2f}" for k, v in p.components.items() if v]
    return "\n".join(rows + [f"  {'device used (nvidia-smi)':<32}{p.device_used_bytes / GIB:8.2f}",
                             f"  {'GPU memory':<32}{p.gpu_memory_bytes / GIB:8.2f}"])


def cuda_readings(torch, device=None) -> dict:
    """torch.cuda's peaks and NVML's device memory of this process (bytes)."""
    import os

    out = {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
           "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)), "device_used_bytes": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if device is None else device)
        mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid() and p.usedGpuMemory]
        out["device_used_bytes"] = int(mine[0]) if mine else int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001 - NVML is optional: the torch figures stand alone
        pass
    return out


class MemoryPlanCallback(TrainerCallback):
    """Plan the run at its start; compare the plan with CUDA's peaks after its first steps."""

    def __init__(self, gpu: str | None = None, seq_len: int | None = None, measure_steps: int = 2,
                 results: str | None = None):
        if measure_steps < 1:
            raise ValueError(f"measure_steps must be at least 1, got {measure_steps}")
        self.gpu_name, self.seq_len, self.measure_steps, self.results = gpu, seq_len, measure_steps, results
        self.spec = self.train = self.plan = None
        self.notes: tuple[str, ...] = ()
        self.measured: dict | None = None
        self._pending: dict = {}

    @classmethod
    def install(cls, trainer, **kwargs) -> "MemoryPlanCallback":
        """Add the callback first, so that the reporting callbacks (W&B, TensorBoard) see its keys."""
        callback = cls(**kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def _gpu(self):
        if self.gpu_name:
            return get_gpu(self.gpu_name)
        import torch

        if torch.cuda.is_available():
            from .run import plan_gpu

            return get_gpu(plan_gpu("cuda", torch.cuda.get_device_name()))
        raise ValueError("MemoryPlanCallback: no CUDA GPU is visible: name the GPU to plan for (gpu='a10g')")

    def _first_seq_len(self, dataloader) -> int:
        batch = next(iter(dataloader))
        ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
        return int(ids.shape[-1])

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        seq = self.seq_len or self._first_seq_len(train_dataloader)
        self.spec, self.train, self.notes = infer_settings(model, args, seq)
        gpu = self._gpu()
        self.plan = plan(self.spec, gpu, self.train)
        t = self.train
        LOG.info("ftmem plan: %s %s on %s, batch %d x seq %d%s: %.2f GiB device used of %.2f GiB (%s)",
                 self.spec.name, t.method, gpu.name, t.batch_size, t.seq_len,
                 " with checkpointing" if t.gradient_checkpointing else "", self.plan.device_used_bytes / GIB,
                 gpu.memory_bytes / GIB, "fits" if self.plan.fits else "does not fit")
        if not self.plan.fits:
            warnings.warn(f"ftmem: this run will not fit {gpu.name} ({gpu.memory_bytes / GIB:.2f} GiB): planned "
                          f"{self.plan.device_used_bytes / GIB:.2f} GiB device used ({t.method}, batch "
                          f"{t.batch_size} x seq {t.seq_len}):\n{breakdown(self.plan)}", RuntimeWarning, stacklevel=2)
        self._pending = {"ftmem/planned_peak_allocated_bytes": self.plan.peak_allocated_bytes,
                         "ftmem/planned_peak_reserved_bytes": self.plan.peak_reserved_bytes,
                         "ftmem/planned_device_used_bytes": self.plan.device_used_bytes,
                         "ftmem/planned_fits": int(self.plan.fits)}
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if self.plan is None or self.measured is not None or state.global_step < self.measure_steps:
            return
        if not torch.cuda.is_available():
            return
        self.measured = cuda_readings(torch)
        p, m = self.plan, self.measured
        self._pending.update({
            "ftmem/measured_peak_allocated_bytes": m["peak_allocated_bytes"],
            "ftmem/measured_peak_reserved_bytes": m["peak_reserved_bytes"],
            "ftmem/ratio_allocated": m["peak_allocated_bytes"] / p.peak_allocated_bytes,
            "ftmem/ratio_reserved": m["peak_reserved_bytes"] / p.peak_reserved_bytes})
        if m["device_used_bytes"] is not None:
            self._pending.update({"ftmem/measured_device_used_bytes": m["device_used_bytes"],
                                  "ftmem/ratio_device_used": m["device_used_bytes"] / p.device_used_bytes})
        LOG.info("ftmem measured after %d steps: peak allocated %.2f GiB (planned %.2f, ratio %.3f)",
                 state.global_step, m["peak_allocated_bytes"] / GIB, p.peak_allocated_bytes / GIB,
                 m["peak_allocated_bytes"] / p.peak_allocated_bytes)
        if self.results:
            self.append_row()
        control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending or logs is None:
            return
        logs.update(self._pending)
        if state.log_history:
            state.log_history[-1].update(self._pending)
        self._pending = {}

    def append_row(self) -> None:
        """The measurement as a results row (:data:`probes.store.SCHEMA`) appended to ``results``."""
        import torch

        from . import store
        from .protocol import Measurement
        from .run import make_probe, make_row

        m = self.measured
        probe = make_probe(self.spec, self.train, "cuda", warmup=1, steps=self.measure_steps)
        row = make_row(probe, Measurement(peak_allocated_bytes=m["peak_allocated_bytes"],
                                          peak_reserved_bytes=m["peak_reserved_bytes"],
                                          device_used_bytes=m["device_used_bytes"]),
                       {"device_name": torch.cuda.get_device_name(), "driver": ""}, "ok", "",
                       f"trainer-{uuid.uuid4().hex[:8]}")
        store.append([row], self.results)
