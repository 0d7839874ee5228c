"""MemoryPlanCallback in a real transformers.Trainer run on a tiny Llama on the CPU: the
settings it infers, the plan it logs, the warning before a run that will not fit; the CUDA
readings mocked, as the probe's are."""
import sys
import types
import warnings

import pytest

TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)


@pytest.fixture
def tiny_lora(torch_stack):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, attn_implementation="sdpa"))
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))


def trainer_for(model, tmp_path, callbacks, seq=16, **extra):
    import torch
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": torch.arange(i, i + seq) % 512, "labels": torch.arange(i, i + seq) % 512} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2,
                             gradient_checkpointing=True, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", optim="adamw_torch", disable_tqdm=True, **extra)
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)


def test_settings_inferred_and_plan_logged_in_a_real_trainer_run(tiny_lora, tmp_path):
    from planner import TrainSpec

    from probes.callback import MemoryPlanCallback

    callback = MemoryPlanCallback(gpu="t4")
    trainer = trainer_for(tiny_lora, tmp_path, [callback])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # negative control: a run that fits does not warn
        trainer.train()
    assert callback.train == TrainSpec(method="lora", rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"),
                                       lora_dropout=0.1, batch_size=2, seq_len=16, gradient_checkpointing=True,
                                       dtype="fp32", precision="autocast", optim="adamw_torch",
                                       attn_implementation="sdpa")
    assert callback.plan.fits and callback.plan.gpu == "t4"
    logged = [h for h in trainer.state.log_history if any(k.startswith("ftmem/") for k in h)]
    assert len(logged) == 1 and "loss" in logged[0]
    assert {k: v for k, v in logged[0].items() if k.startswith("ftmem/")} == {
        "ftmem/planned_peak_allocated_bytes": callback.plan.peak_allocated_bytes,
        "ftmem/planned_peak_reserved_bytes": callback.plan.peak_reserved_bytes,
        "ftmem/planned_device_used_bytes": callback.plan.device_used_bytes, "ftmem/planned_fits": 1}
    assert callback.measured is None  # no CUDA: nothing measured


def test_without_the_callback_nothing_is_logged(tiny_lora, tmp_path):
    trainer = trainer_for(tiny_lora, tmp_path, [])
    trainer.train()
    assert not [k for h in trainer.state.log_history for k in h if k.startswith("ftmem/")]


def test_a_run_that_will_not_fit_warns_with_the_breakdown_before_the_first_step(torch_stack, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState, TrainingArguments

    from planner import get_model
    from probes.callback import MemoryPlanCallback

    config = get_model("7b").hf_config()
    config.pop("model_type")
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))  # full fine-tuning of Llama-2-7B, shapes only
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, report_to=[], use_cpu=True)
    callback = MemoryPlanCallback(gpu="t4", seq_len=512)
    with pytest.warns(RuntimeWarning) as caught:
        callback.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("ftmem: this run will not fit t4 (15.00 GiB): planned ")
    assert "(full, batch 1 x seq 512):\n  weights/base " in message and "\n  GPU memory" in message
    assert callback.train.method == "full" and callback.train.dtype == "fp32"


def test_cuda_readings_are_logged_with_their_ratio_and_a_row_appended(tiny_lora, tmp_path, monkeypatch):
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from probes import store
    from probes.callback import MemoryPlanCallback

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 << 30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 4 << 30)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A10G")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    proc = types.SimpleNamespace(pid=__import__("os").getpid(), usedGpuMemory=5 << 30)
    nvml = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: "h",
                                 nvmlDeviceGetComputeRunningProcesses=lambda h: [proc])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True)
    results = tmp_path / "rows.csv"
    callback = MemoryPlanCallback(gpu="a10g", seq_len=64, results=str(results))
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control, model=tiny_lora)
    state.global_step = 1
    callback.on_step_end(args, state, control)
    assert callback.measured is None  # negative control: not before measure_steps
    state.global_step = 2
    callback.on_step_end(args, state, control)
    assert control.should_log
    p = callback.plan
    logs = {"loss": 1.0}
    callback.on_log(args, state, control, logs=logs)
    assert logs == {"loss": 1.0, "ftmem/planned_peak_allocated_bytes": p.peak_allocated_bytes,
                    "ftmem/planned_peak_reserved_bytes": p.peak_reserved_bytes,
                    "ftmem/planned_device_used_bytes": p.device_used_bytes, "ftmem/planned_fits": 1,
                    "ftmem/measured_peak_allocated_bytes": 3 << 30, "ftmem/measured_peak_reserved_bytes": 4 << 30,
                    "ftmem/ratio_allocated": (3 << 30) / p.peak_allocated_bytes,
                    "ftmem/ratio_reserved": (4 << 30) / p.peak_reserved_bytes,
                    "ftmem/measured_device_used_bytes": 5 << 30,
                    "ftmem/ratio_device_used": (5 << 30) / p.device_used_bytes}
    later = {"loss": 0.5}
    callback.on_log(args, state, control, logs=later)
    assert later == {"loss": 0.5}  # logged once
    (row,) = store.load_rows(results)
    assert (row["schema_version"], row["device"], row["status"], row["method"], row["seq_len"], row["kernels"]) == (
        3, "cuda", "ok", "lora", 64, "auto")
    assert (row["peak_allocated_bytes"], row["peak_reserved_bytes"], row["device_used_bytes"]) == (
        3 << 30, 4 << 30, 5 << 30)
    assert row["run_id"].startswith("trainer-") and row["device_name"] == "NVIDIA A10G"
