"""Planned against published tokens per second: the data file, the arithmetic, the report."""
import pytest

from planner.model.catalog import get_gpu, get_model
from planner.model.specs import TrainSpec
from planner.time.timing import iteration_seconds, step_time
from validate import throughput as TP


def test_every_row_has_a_stated_source_and_plans():
    table = TP.load()
    assert len(table["rows"]) >= 10
    for row in table["rows"]:
        source = table["sources"][row["source"]]
        assert source["url"].startswith("https://") and source["versions"] and source["missing"]
        assert row["tokens_per_second"] > 0
    for item in table["excluded"]:
        assert item["url"].startswith("https://") and item["why"]


def test_a_row_planned_by_hand():
    """Accumulation: acc * T tokens over acc forward+backward and one optimizer step."""
    row = {"source": "s", "model": "mistral-7b", "method": "lora", "batch_size": 2, "seq_len": 128,
           "gradient_checkpointing": False, "precision": "autocast", "dtype": "bf16",
           "attn_implementation": "sdpa", "optim": "adamw_torch", "accumulation": 4, "tokens_per_second": 1}
    table = {"sources": {"s": {"gpu": "a100-80gb"}}}
    st = step_time(get_model("mistral-7b"), get_gpu("a100-80gb"),
                   TrainSpec(method="lora", batch_size=2, seq_len=128, attn_implementation="sdpa"), "bf16")
    opt = st.terms["optimizer/step"]["seconds"]
    assert TP.planned_tokens_per_second(row, table) == pytest.approx(4 * 256 / (4 * (st.step_seconds - opt) + opt))
    assert iteration_seconds(st, 1) == st.step_seconds
    with pytest.raises(ValueError):
        iteration_seconds(st, 0)


def test_summary_by_group_by_hand():
    c = [TP.Compared({"method": "lora"}, 110.0, 100.0), TP.Compared({"method": "lora"}, 80.0, 100.0),
         TP.Compared({"method": "lora"}, 100.0, 100.0), TP.Compared({"method": "full"}, 95.0, 100.0)]
    got = TP.summary(c, lambda r: r["method"])
    assert [g[:2] for g in got] == [("full", 1), ("lora", 3)]
    assert got[1][2] == pytest.approx(0.10) and got[1][3] == pytest.approx(0.20)  # median of 0.1, 0.2, 0


def test_ratio_pairs_match_only_equal_settings():
    base = {"source": "s", "model": "m", "batch_size": 1, "seq_len": 8, "gradient_checkpointing": True}
    c = [TP.Compared({**base, "method": "lora"}, 100.0, 200.0),
         TP.Compared({**base, "method": "qlora"}, 80.0, 150.0),
         TP.Compared({**base, "method": "qlora", "seq_len": 16}, 1.0, 1.0)]  # other settings: no pair
    pairs = TP.ratio_pairs(c)
    assert [p["pair"] for p in pairs] == ["qlora/lora"]
    assert pairs[0]["planned"] == pytest.approx(0.8) and pairs[0]["published"] == pytest.approx(0.75)
    assert pairs[0]["error"] == pytest.approx(0.8 / 0.75 - 1)


def test_adapter_pairs_need_the_same_adapter():
    """DoRA against LoRA only with the same rank, alpha, dropout and targets; full fine-tuning
    against any adapter row; checkpointing on / off of one adapter only."""
    base = {"source": "s", "model": "m", "batch_size": 1, "seq_len": 8, "gradient_checkpointing": False}
    qv = {"rank": 32, "alpha": 64, "lora_dropout": 0.0, "target_modules": "q_proj,v_proj"}
    mlp = {"rank": 10, "alpha": 20, "lora_dropout": 0.0, "target_modules": "gate_proj,up_proj,down_proj"}
    c = [TP.Compared({**base, **qv, "method": "lora"}, 100.0, 100.0),
         TP.Compared({**base, **mlp, "method": "lora"}, 90.0, 90.0),
         TP.Compared({**base, **qv, "method": "dora"}, 80.0, 80.0),
         TP.Compared({**base, "method": "full"}, 30.0, 30.0),
         TP.Compared({**base, **mlp, "method": "lora", "gradient_checkpointing": True}, 70.0, 70.0)]
    pairs = TP.ratio_pairs(c)
    assert [(p["pair"], round(p["planned"], 3)) for p in pairs] == [
        ("dora/lora", 0.8), ("full/lora", 0.3), ("full/lora", 0.333), ("gc on/off", 0.778)]
    # negative control: without the adapter check the DoRA row pairs with the MLP LoRA row too
    assert TP._setting(c[2].row) == TP._setting(c[1].row) and not TP._same_adapter(c[2].row, c[1].row)


def test_report_states_targets_and_sources():
    table = TP.load()
    text = TP.markdown()
    assert f"Median |planned / published - 1| over {len(table['rows'])} rows:" in text
    # the targets are stated with whether they are met (a report, not a gate: the L40's two rows are
    # 30% off at its datasheet peak, data/gpus.json)
    assert "(target under 10%: met)" in text and "(target under 25%: NOT met)" in text
    assert "| GPU | rows | median error | worst error |" in text and "| l40 | 2 |" in text
    for gpu in ("a100-80gb", "l4", "l40s"):  # the published set spans GPUs beside the A100
        assert f"| {gpu} | " in text
    assert "| method | rows | median error | worst error |" in text and "| qlora | " in text
    assert "| dora/lora | peft-metamathqa-l40s |" in text
    assert "Ratios within 5%: " in text
    assert "; not checked (no published pair with stated settings): gc on/off." in text
    assert "https://github.com/QwenLM/Qwen#profiling-of-memory-and-speed" in text
