"""The `plan` command through click's CliRunner: exact errors, contracts, formats."""
import csv
import io
import json

import pytest
from click.testing import CliRunner

from planner.cli.command import main
from planner.cli.render import CSV_FIELDS
from planner.units import GIB


def run(*args):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("args,message", [
    (["--model", "8x"], "plan: error: unknown model '8x' (did you mean 8b?); see `plan --list-models`\n"),
    (["--gpu", "t5"], "plan: error: unknown GPU 't5' (did you mean t4?); see `plan --list-gpus`\n"),
    (["--batch-size", "0"], "plan: error: batch size must be at least 1, got 0\n"),
    (["--seq-len", "-5"], "plan: error: sequence length must be at least 1, got -5\n"),
    (["--method", "lora", "-r", "5000"], "plan: error: rank 5000 is larger than q_proj (4096 -> 4096) of llama-2-7b\n"),
    (["--model", "no/such/config.json"], "plan: error: unknown model 'no/such/config.json': not a Hub model id "
                                         "(ORG/NAME) and no such config.json\n"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr == message
    assert result.stdout == ""


def test_malformed_config_json(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text("{oops")
    result = run("--model", str(cfg))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"plan: error: {cfg}: not a readable JSON config")
    assert result.stderr.count("\n") == 1


def test_json_is_the_only_output_and_has_one_entry_per_model_gpu_method():
    result = run("--model", "7b", "--model", "qwen2.5-0.5b", "--gpu", "t4", "--gpu", "a100-80gb", "--json")
    assert result.exit_code == 0
    plans = json.loads(result.stdout)["plans"]
    assert len(plans) == 2 * 2 * 6
    assert {(p["model"], p["gpu"]) for p in plans} == {
        ("llama-2-7b", "t4"), ("llama-2-7b", "a100-80gb"), ("qwen2.5-0.5b", "t4"), ("qwen2.5-0.5b", "a100-80gb")}
    assert [p["method"] for p in plans[:6]] == ["full", "lora", "rslora", "qlora", "dora", "qdora"]
    for p in plans:
        assert isinstance(p["peak_allocated_bytes"], int) and isinstance(p["fits"], bool)
        assert p["settings"]["dtype"] == ("fp16" if p["gpu"] == "t4" else "bf16")


def test_json_max_searches_are_consistent_with_plans():
    result = run("--model", "7b", "--gpu", "a10g", "--method", "qlora", "--max-batch-size", "--max-seq-len", "--json")
    entry = json.loads(result.stdout)["plans"][0]
    b = entry["max_batch_size"]
    fits = lambda *a: json.loads(run("--model", "7b", "--gpu", "a10g", "--method", "qlora", *a, "--json")
                                 .stdout)["plans"][0]["fits"]
    assert b >= 1 and fits("--batch-size", str(b)) and not fits("--batch-size", str(b + 1))
    s = entry["max_seq_len"]
    assert s == 4096 or not fits("--seq-len", str(s + 1))
    assert fits("--seq-len", str(s))


def test_csv_header_and_rows():
    result = run("--model", "7b", "--gpu", "t4", "--gpu", "l4", "--method", "qlora", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert result.stdout.splitlines()[0] == ",".join(CSV_FIELDS)
    assert [r["gpu"] for r in rows] == ["t4", "l4"]
    assert rows[0]["total_params"] == "6738415616"
    assert rows[0]["target_modules"] == "all-linear"


def test_table_header_states_every_setting_and_counts():
    result = run("--model", "qwen2.5-0.5b", "--gpu", "a100-80gb", "--method", "lora", "-r", "8",
                 "--target-modules", "q_proj,k_proj,v_proj,o_proj", "--seq-len", "256")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == ("plan: model=qwen2.5-0.5b gpu=a100-80gb (80.00 GiB) batch_size=1 seq_len=256 rank=8 "
                        "alpha=16 target_modules=q_proj,k_proj,v_proj,o_proj dtype=bf16 precision=autocast "
                        "optim=adamw_torch gradient_checkpointing=off quant_type=nf4 double_quant=on")
    rows = {line[:30].strip(): line[30:].split() for line in lines if line[:30].strip()}
    assert rows["trainable params"] == ["1,081,344"]  # published-count check: Qwen2.5-0.5B r8 q,k,v,o
    assert rows["total params"] == ["494,032,768"]
    assert rows["weights/base"] == [f"{494_032_768 * 2 / GIB:.2f}"]
    assert rows["GPU memory"] == ["80.00"]
    assert rows["fits"] == ["yes"]
    assert lines[-1].startswith("recommendation: LoRA fits")


def test_table_columns_stay_apart_for_a_trillion_parameters():
    """Kimi-K2's 1,026,408,209,408 parameters (17 characters) in two columns: each cell is its own
    whitespace-separated field (a fixed 15-wide column ran them together)."""
    result = run("--model", "kimi-k2", "--gpu", "h100-80gb", "--method", "full", "--method", "lora")
    assert result.exit_code == 0
    total = next(line for line in result.stdout.splitlines() if line.startswith("total params"))
    assert total[30:].split() == ["1,026,408,209,408"] * 2


def test_list_gpus_and_models():
    gpus = run("--list-gpus").stdout.splitlines()
    assert gpus[0].split()[:3] == ["t4", "15.00", "GiB"]
    assert any(line.startswith("h100-80gb") for line in gpus)
    models = run("--list-models").stdout.splitlines()
    assert models[0].split() == ["llama-2-7b", "meta-llama/Llama-2-7b-hf"]


def test_recommendation_follows_memory():
    t4 = run("--model", "7b", "--gpu", "t4").stdout
    assert "recommendation: Memory-bound: use QLoRA" in t4
    h200 = run("--model", "qwen2.5-0.5b", "--gpu", "h200").stdout
    assert "recommendation: Full fine-tuning fits comfortably" in h200
    tiny_gpu = run("--model", "70b", "--gpu", "t4", "--method", "qlora").stdout
    assert "Nothing planned fits t4" in tiny_gpu and "smallest catalog GPU" in tiny_gpu


def test_training_settings_reach_the_plan():
    import json

    from click.testing import CliRunner

    from planner.cli.command import main

    args = ["--model", "7b", "--gpu", "a100-80gb", "--method", "lora", "--json", "--seq-len", "1024"]
    base = json.loads(CliRunner().invoke(main, args).stdout)["plans"][0]
    result = CliRunner().invoke(main, args + ["--lora-dropout", "0.05", "--attn-implementation", "eager"])
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["settings"]["lora_dropout"] == 0.05 and plan["settings"]["attn_implementation"] == "eager"
    assert plan["components"]["activations/saved"] > base["components"]["activations/saved"]
    assert any(n.startswith("eager attention: it keeps the seq x seq") for n in plan["notes"])
    bad = CliRunner().invoke(main, args + ["--lora-dropout", "1.5"])
    assert bad.exit_code == 2


def test_modules_to_save_reach_the_plan_and_bad_names_exit_2():
    import json

    from click.testing import CliRunner

    from planner.cli.command import main

    args = ["--model", "qwen2.5-0.5b", "--gpu", "a100-80gb", "--method", "lora"]
    base = json.loads(CliRunner().invoke(main, args + ["--json"]).stdout)["plans"][0]
    result = CliRunner().invoke(main, args + ["--json", "--modules-to-save", "embed_tokens, lm_head"])
    plan = json.loads(result.stdout)["plans"][0]
    assert plan["settings"]["modules_to_save"] == ["embed_tokens", "lm_head"]
    v, h = 151936, 896  # Qwen2.5-0.5B: tied, so two independent copies, bf16
    assert plan["components"]["adapters/modules"] == 2 * v * h * 2
    assert plan["trainable_params"] - base["trainable_params"] == 2 * v * h
    assert any("two independent copies" in n for n in plan["notes"])
    table = CliRunner().invoke(main, args + ["--modules-to-save", "lm_head"]).stdout
    assert table.splitlines()[0].endswith(" modules_to_save=lm_head")
    bad = CliRunner().invoke(main, args + ["--modules-to-save", "norm"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "plan: error: modules to save must be among embed_tokens, lm_head, got norm"


def test_time_rows_and_hours_exactly():
    """The time rows of a table: planner.time.timing's figures, formatted; hours for the dataset."""
    result = run("--model", "7b", "--gpu", "t4", "--method", "lora", "--method", "qlora",
                 "--dataset-tokens", "10000000", "--epochs", "2")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("step time (s)"))
    assert lines[start:start + 5] == [
        "step time (s)                           0.920          1.206",
        "tokens / s                                556            425",
        "MFU                                       23%            18%",
        "time bound by                         compute        compute",
        "hours for 10,000,000 tok x 2             10.0           13.1",
    ]
    assert lines[-1] == ("recommendation: Memory-bound: use QLoRA (NF4, double quant), 10.1 GiB of 15.0 GiB. "
                         "It runs at about 0.76x LoRA's speed; 16-bit LoRA needs 17.7 GiB.")
    assert ("note: time planned with the default efficiency factors: data/probes has no CUDA rows of the turing "
            "family with a step time") in lines
    # hours by hand: ceil(2e7 / 512) steps of the planned step
    payload = json.loads(run("--model", "7b", "--gpu", "t4", "--method", "qlora", "--json",
                             "--dataset-tokens", "10000000", "--epochs", "2").stdout)["plans"][0]
    assert payload["total_hours"] == pytest.approx(39063 * payload["step_seconds"] / 3600)
    assert (payload["dataset_tokens"], payload["epochs"]) == (10_000_000, 2)
    assert payload["tokens_per_second"] == pytest.approx(512 / payload["step_seconds"])
    assert payload["time"]["bound"] == "compute" and "qlora/dequant" in payload["time"]["terms"]


def test_time_columns_in_csv_and_no_time_without_hours():
    rows = list(csv.DictReader(io.StringIO(run("--model", "7b", "--gpu", "t4", "--method", "lora", "--csv").stdout)))
    assert float(rows[0]["step_seconds"]) == pytest.approx(0.920, abs=5e-4)
    assert float(rows[0]["mfu"]) == pytest.approx(0.23, abs=5e-3)
    assert rows[0]["total_hours"] == ""
    assert "hours for" not in run("--model", "7b", "--gpu", "t4", "--method", "lora").stdout


@pytest.mark.parametrize("args,message", [
    (["--dataset-tokens", "0"], "plan: error: --dataset-tokens must be at least 1, got 0\n"),
    (["--epochs", "0"], "plan: error: --epochs must be at least 1, got 0\n"),
])
def test_bad_time_input_is_one_line_exit_2(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr == message


def test_no_calibration_drops_the_time_note():
    out = run("--model", "7b", "--gpu", "t4", "--method", "lora", "--no-calibrated").stdout
    assert "efficiency factors" not in out and "step time (s)" in out


def test_a_layer_kind_the_formulas_do_not_know_is_one_line_exit_2(monkeypatch):
    """A model whose layers include a kind the formulas do not know (as a future table entry
    could make) is refused by name, exit 2, no traceback; the same model with known kinds plans."""
    from dataclasses import replace

    import planner.cli.command as cli
    from planner import get_model

    mistral = get_model("mistral-7b")
    odd = replace(mistral, kinds=(replace(mistral.kinds[0], name="lightning_attention"),))
    for spec, code in ((odd, 2), (mistral, 0)):
        monkeypatch.setattr(cli, "get_model", lambda *args, spec=spec: spec)
        result = CliRunner().invoke(main, ["--model", "mistral-7b", "--gpu", "a100-80gb", "--method", "lora"])
        assert result.exit_code == code, result.output
        if code:
            assert result.stderr.count("\n") == 1 and "layer kind 'lightning_attention'" in result.stderr
            assert "Traceback" not in result.output


def test_mean_len_packing_and_host_in_json_and_table():
    """--mean-len 300 at batch 4: rows padded to 625 (300 x H_4), 1200 real tokens a step; the
    hours count real tokens; --packing fills 1024-token rows; --host cloud-2vcpu says so."""
    args = ["--model", "qwen2.5-0.5b", "--gpu", "l4", "--method", "lora", "--seq-len", "1024", "--batch-size", "4"]
    p = json.loads(run(*args, "--mean-len", "300", "--dataset-tokens", "1200000", "--json").stdout)["plans"][0]
    assert p["data"]["padded_len"] == 625 and p["data"]["real_tokens_per_step"] == 1200
    assert p["data"]["real_tokens_per_second"] == pytest.approx(1200 / p["data"]["step_seconds"])
    assert p["total_hours"] == pytest.approx(1000 * p["data"]["step_seconds"] / 3600)
    assert p["settings"]["seq_len"] == 1024  # memory plans the longest batch
    packed = json.loads(run(*args, "--mean-len", "300", "--packing", "--json").stdout)["plans"][0]
    assert packed["data"]["padded_len"] == 1024 and packed["data"]["real_tokens_per_step"] == 4096
    assert packed["peak_allocated_bytes"] == p["peak_allocated_bytes"]
    table = run(*args, "--mean-len", "300", "--host", "cloud-2vcpu").stdout
    assert "padded length                             625" in table
    assert any(line.startswith("note: host cloud-2vcpu: ") for line in table.splitlines())
    assert "padded length" not in run(*args).stdout  # no data rows unless asked


def test_mean_len_longer_than_seq_len_is_refused():
    result = run("--model", "7b", "--seq-len", "512", "--mean-len", "600")
    assert result.exit_code == 2
    assert result.stderr == "plan: error: --mean-len must be between 1 and --seq-len (512), got 600\n"
