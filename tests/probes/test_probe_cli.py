"""The `probe` command: JSON contract, exit codes, sweeps that survive OOM, local weights."""
import json

import pytest
from click.testing import CliRunner

JSON_KEYS = ("peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes",
             "tokens_per_second", "status", "planned_peak_allocated_bytes", "ratio")


def invoke(args):
    from probes.cli import main

    return CliRunner().invoke(main, args)


def test_json_prints_only_rows_and_appends_them(llama_tiny_config, tmp_path, torch_stack):
    out = tmp_path / "r.csv"
    result = invoke(["--model", str(llama_tiny_config), "--method", "lora", "--method", "qdora",
                     "--device", "fake", "--batch-size", "1,2", "--seq-len", "32",
                     "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["method"], r["batch_size"]) for r in rows] == [("lora", 1), ("lora", 2),
                                                             ("qdora", 1), ("qdora", 2)]
    for row in rows:
        assert all(key in row for key in JSON_KEYS)
        assert isinstance(row["peak_allocated_bytes"], int) and row["status"] == "ok"
    assert len({r["run_id"] for r in rows}) == 1
    from probes import store

    assert store.load_rows(out) == rows
    assert "[4/4]" in result.stderr


def test_table_output_and_help(llama_tiny_config, tmp_path, torch_stack):
    result = invoke(["--model", str(llama_tiny_config), "--device", "fake", "--seq-len", "16",
                     "--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert "alloc GiB" in result.stdout and "planned" in result.stdout and " lora " in result.stdout
    assert "kernels" not in result.stdout.splitlines()[0]  # a dense model: no kernels column
    help_text = invoke(["--help"]).stdout
    for flag in ("--device", "--batch-size", "--weights", "--output", "--json", "--force",
                 "--precision", "--gradient-checkpointing"):
        assert flag in help_text


def test_a_hybrid_probe_shows_and_records_its_kernels(tmp_path, torch_stack):
    """LFM2 (a short-convolution layer): the table gets a kernels column, the row says torch."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(
        model_type="lfm2", pad_token_id=0, vocab_size=512, hidden_size=64, intermediate_size=160,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        layer_types=["conv", "full_attention"], num_hidden_layers=2, block_multiple_of=16)))
    out = tmp_path / "r.csv"
    result = invoke(["--model", str(config), "--device", "fake", "--seq-len", "16", "--kernels", "torch",
                     "--output", str(out)])
    assert result.exit_code == 0, result.output
    head, _, row = result.stdout.splitlines()[:3]
    assert head.split()[5] == "kernels" and row.split()[5] == "torch"
    from probes import store

    (saved,) = store.load_rows(out)
    assert saved["kernels"] == "torch" and saved["status"] == "ok"


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-9000"], "unknown model"),
    (["--batch-size", "1,x"], "comma list"),
    (["--batch-size", "0"], "positive"),
    (["--rank", "0"], "rank"),
    (["--device", "fake", "--weights", "."], "--weights"),
    (["--device", "cpu", "--warmup", "0"], "warmup"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = invoke(args + ["--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "r.csv").exists()


def test_a_foreign_results_file_is_an_error_and_left_alone(llama_tiny_config, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("a,b\n1,2\n")
    result = invoke(["--model", str(llama_tiny_config), "--device", "fake", "--output", str(out)])
    assert result.exit_code == 1
    assert "not a probe results table" in result.stderr and len(result.stderr.splitlines()) == 1
    assert out.read_text() == "a,b\n1,2\n"


def test_a_sweep_goes_on_after_an_oom(llama_tiny_config, tmp_path, monkeypatch, torch_stack):
    from probes import run as runner
    from probes.cuda import OutOfMemory

    real = runner.measure

    def oom_at_batch_2(probe):
        if probe.train.batch_size == 2:
            raise OutOfMemory("CUDA out of memory (simulated)", {"allocated_bytes_at_oom": 1})
        return real(probe)

    monkeypatch.setattr(runner, "measure", oom_at_batch_2)
    out = tmp_path / "r.csv"
    result = invoke(["--model", str(llama_tiny_config), "--device", "fake", "--seq-len", "16",
                     "--batch-size", "1,2,3", "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    statuses = [r["status"] for r in json.loads(result.stdout)["rows"]]
    assert statuses == ["ok", "oom", "ok"]
    from probes import store

    assert [r["status"] for r in store.load_rows(out)] == statuses


def test_unsupported_optimizer_on_cpu_is_a_row(llama_tiny_config, tmp_path, torch_stack):
    result = invoke(["--model", str(llama_tiny_config), "--device", "fake", "--seq-len", "16",
                     "--optim", "adamw_8bit", "--output", str(tmp_path / "r.csv"), "--json"])
    assert result.exit_code == 0
    (row,) = json.loads(result.stdout)["rows"]
    assert row["status"] == "unsupported" and row["peak_allocated_bytes"] is None


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_local_safetensors_weights_measure_like_random_init(llama_tiny, tmp_path_factory,
                                                             method, torch_stack):
    """--weights loads a save_pretrained folder (safetensors); same shapes, same bytes."""
    from planner import TrainSpec
    from probes import build, cpu

    folder = tmp_path_factory.mktemp("weights")
    build.random_init(llama_tiny, torch_stack.bfloat16, "cpu").save_pretrained(folder)
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())
    train = TrainSpec(method=method, batch_size=1, seq_len=32, dtype="bf16")
    loaded = cpu.measure(llama_tiny, train, weights=folder)
    fresh = cpu.measure(llama_tiny, train)
    assert loaded.peak_allocated_bytes == fresh.peak_allocated_bytes
    assert loaded.phase_peaks == fresh.phase_peaks


def test_device_cuda_without_a_gpu_is_a_usage_error(tmp_path, torch_stack):
    if torch_stack.cuda.is_available():
        pytest.skip("a GPU is present")
    result = invoke(["--device", "cuda", "--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "no CUDA GPU" in result.stderr


# A decoder whose model_type the planner's architecture table lacks (transformers builds it).
UNPLANNED_TINY = {
    "model_type": "stablelm", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}
LACKS_NOTE = "the planner's architecture table lacks model_type stablelm: no planned figure"


def write_config(folder, config):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_a_decoder_the_planner_lacks_is_measured_without_a_plan(tmp_path, torch_stack):
    from planner.model.catalog import SUPPORTED_MODEL_TYPES

    assert UNPLANNED_TINY["model_type"] not in SUPPORTED_MODEL_TYPES
    config = write_config(tmp_path / "stablelm-tiny", UNPLANNED_TINY)
    out = tmp_path / "r.csv"
    args = ["--model", str(config), "--device", "fake", "--seq-len", "16", "--output", str(out)]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert f"note: {LACKS_NOTE}" in result.stdout
    from probes import store

    (row,) = store.load_rows(out)
    assert row["model"] == "stablelm-tiny" and row["status"] == "ok"
    assert row["peak_allocated_bytes"] > 0 and row["forward_peak_bytes"] > 0
    assert row["planned_peak_allocated_bytes"] is None and row["plan_gpu"] is None
    assert row["ratio"] is None
    # --json: stdout stays the rows alone; the note goes to stderr
    result = invoke(args + ["--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert row["peak_allocated_bytes"] > 0 and row["planned_peak_allocated_bytes"] is None
    assert f"probe: note: {LACKS_NOTE}" in result.stderr


def test_a_catalog_model_beside_it_keeps_its_plan(llama_tiny_config, tmp_path, torch_stack):
    config = write_config(tmp_path / "stablelm-tiny", UNPLANNED_TINY)
    result = invoke(["--model", str(llama_tiny_config), "--model", str(config), "--device", "fake",
                     "--seq-len", "16", "--output", str(tmp_path / "r.csv"), "--json"])
    assert result.exit_code == 0, result.output
    llama, olmo = json.loads(result.stdout)["rows"]
    assert llama["planned_peak_allocated_bytes"] > 0 and llama["ratio"] > 0
    assert olmo["planned_peak_allocated_bytes"] is None


@pytest.mark.parametrize("config, message", [
    ({"model_type": "bert", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4}, "not a decoder"),
    ({"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
     "not a decoder"),
    ({"model_type": "no-such-arch", "vocab_size": 256}, "unknown model_type"),
])
def test_a_config_that_is_not_a_decoder_is_one_line_and_exit_2(config, message, tmp_path, torch_stack):
    path = write_config(tmp_path / "other", config)
    result = invoke(["--model", str(path), "--device", "fake", "--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("probe: error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not result.stdout
    assert not (tmp_path / "r.csv").exists()


def test_auto_without_a_gpu_traces_on_fake_tensors_and_says_so(llama_tiny_config, tmp_path, torch_stack):
    if torch_stack.cuda.is_available():
        pytest.skip("a GPU is present")
    result = invoke(["--model", str(llama_tiny_config), "--method", "lora", "--seq-len", "32",
                     "--output", str(tmp_path / "r.csv"), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert row["device"] == "fake" and row["step_time_s"] is None and row["tokens_per_second"] is None
    assert "no CUDA GPU is visible: tracing the step on fake tensors" in result.stderr


def test_cpu_without_native_bf16_warns_with_an_estimate_and_shows_progress(llama_tiny_config, tmp_path,
                                                                            monkeypatch, torch_stack):
    from probes import cpu

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    result = invoke(["--model", str(llama_tiny_config), "--method", "lora", "--seq-len", "16", "--device", "cpu",
                     "--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert "this CPU has no native bf16" in result.stderr and "may take about" in result.stderr
    assert "warm-up step 1/1:" in result.stderr and "measured step 1/1:" in result.stderr
    # the same probe in fp32 is not emulated: no warning
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    quiet = invoke(["--model", str(llama_tiny_config), "--method", "lora", "--seq-len", "16", "--device", "cpu",
                    "--dtype", "fp32", "--output", str(tmp_path / "r.csv")])
    assert quiet.exit_code == 0 and "no native bf16" not in quiet.stderr


def test_native_bf16_detection(monkeypatch):
    from probes.cpu import emulated_step_seconds, has_native_bf16

    flags = "flags : fpu avx2 avx512f avx512_bf16 amx_tile"
    # the answer for given flags, capability and oneDNN cap does not depend on this process's
    # environment: the same with the cap set (as when timing the suite at AVX2) and unset
    for env in ("AVX2", None):
        if env is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", env)
        assert has_native_bf16(flags, "AVX512", "")
        assert not has_native_bf16(flags, "AVX512", "AVX2")  # oneDNN capped at AVX2
        assert not has_native_bf16(flags, "AVX2", "")  # torch runs at AVX2 (e.g. ATEN_CPU_CAPABILITY=avx2)
        assert not has_native_bf16("flags : fpu avx2 avx512f", "AVX512", "")
    # left out, the cap is read from the environment
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not has_native_bf16(flags, "AVX512")
    # the warning's estimate: 6 FLOP per parameter and token at 1.4 GFLOP/s
    assert emulated_step_seconds(494_032_768, 64) == pytest.approx(135.5, abs=0.1)


def test_speed_columns_cuda_rows_only():
    """CUDA rows get the planned tokens per second and the measured MFU; a CPU row's time is
    marked not comparable (n/c), in the table and in a note; a fake trace has no time."""
    from planner.time.calibration import measured_speed
    from probes.cli import notes, table

    base = dict(model="qwen2.5-0.5b", method="lora", rank=16, alpha=32.0, target_modules="all-linear",
                batch_size=1, seq_len=512, gradient_checkpointing=False, dtype="bf16", precision="autocast",
                optim="adamw_torch", quant_type="nf4", double_quant=True, status="ok", error="",
                peak_allocated_bytes=1, peak_reserved_bytes=None, device_used_bytes=None,
                forward_peak_bytes=None, backward_peak_bytes=None, optimizer_peak_bytes=None,
                planned_peak_allocated_bytes=1, ratio=1.0, plan_gpu="h100-80gb", tokens_per_second=None)
    cuda = dict(base, device="cuda", device_name="NVIDIA H100 80GB HBM3", step_time_s=0.25)
    cpu = dict(base, device="cpu", device_name="cpu", step_time_s=9.0)
    fake = dict(base, device="fake", device_name="fake", step_time_s=None)
    planned, mfu = measured_speed(cuda)
    lines = table([cuda, cpu, fake]).splitlines()
    assert lines[0].endswith("ratio  plan tok/s  MFU")
    assert lines[2].split()[-2:] == [f"{planned:.0f}", f"{mfu:.0%}"]
    assert lines[3].split()[-2:] == ["n/c", "n/c"]
    assert lines[4].split()[-2:] == ["-", "-"]
    assert ("step s and tok/s of cpu rows time a CPU step: not comparable to a GPU plan "
            "(n/c: no planned speed, no MFU).") in notes([cuda, cpu, fake])
