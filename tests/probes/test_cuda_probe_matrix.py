"""benchmarks/cuda_probe_matrix.py without a GPU: the same sweep, row writing and planned-vs-
measured lines, with the CPU backend on a tiny Llama config (real CPU steps, no mock)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from planner import METHODS

ROOT = Path(__file__).resolve().parents[2]
TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "tie_word_embeddings": False}


def script():
    if "cuda_probe_matrix" not in sys.modules:  # a dataclass module must be registered before it runs
        spec = importlib.util.spec_from_file_location("cuda_probe_matrix", ROOT / "benchmarks" / "cuda_probe_matrix.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["cuda_probe_matrix"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["cuda_probe_matrix"]


def test_default_matrix_is_every_method_two_sizes_two_lengths_gc_on_off():
    m = script()
    cells = m.matrix()
    assert len(cells) == len(METHODS) * 2 * 2 * 2 == 48
    assert {c.method for c in cells} == set(METHODS) and {c.model for c in cells} == {"qwen2.5-0.5b", "qwen2.5-1.5b"}
    assert {c.seq_len for c in cells} == {512, 2048} and {c.gc for c in cells} == {False, True}
    assert cells[0].model == "qwen2.5-0.5b" and cells[-1].model == "qwen2.5-1.5b"  # smallest first


def test_cpu_sweep_writes_rows_and_prints_planned_against_measured(tmp_path, capsys):
    from probes import store

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "rows.csv"
    m = script()
    rc = m.main(["--device", "cpu", "--model", str(config), "--method", "lora", "--method", "full",
                 "--seq-len", "16", "--batch-size", "1", "--output", str(out)])
    assert rc == 0
    rows = store.load_rows(out)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["device"] == "cpu" for r in rows)
    assert {(r["method"], r["seq_len"], r["gradient_checkpointing"]) for r in rows} == {
        (meth, 16, gc) for meth in ("lora", "full") for gc in (False, True)}
    text = capsys.readouterr().out
    assert "4 probes on cpu" in text and "4 measured in" in text and "left: 0" in text
    # each line: measured / planned allocation with its ratio; the CPU step is not comparable
    lines = [ln for ln in text.splitlines() if ln.startswith("config") or " lora " in ln or " full " in ln]
    assert len(lines) == 4 and all("n/c" in ln for ln in lines)
    for r in rows:  # the ratio printed is the row's measured over the uncalibrated plan
        planned = m.planned(m.get_model(str(config)), r)
        assert r["peak_allocated_bytes"] / planned["alloc"] == pytest.approx(r["peak_allocated_bytes"]
                                                                             / r["planned_peak_allocated_bytes"], rel=0.02)
    assert "allocated measured/planned: median" in text


def test_the_budget_stops_before_overrunning(tmp_path):
    """A clock that moves 50 s a reading (a probe reads it twice: 50 s each): a 150 s budget measures
    one probe (the next would end at 250 s) and leaves the other three."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    m = script()
    ticks = iter(range(0, 10_000, 50))  # start, then t0/after per probe: 50 s apart

    cells = m.matrix((str(config),), ("lora",), (16, 32))
    done, left = m.sweep(cells, "cpu", tmp_path / "rows.csv", batch=1, budget_s=150,
                         clock=lambda: next(ticks), say=lambda s: None)
    assert len(done) == 1 and left == cells[1:] and len(cells) == 4
