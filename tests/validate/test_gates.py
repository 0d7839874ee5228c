"""The CI gates, each with a negative control that proves it can fail."""
import json

import pytest
from click.testing import CliRunner

from validate import baselines as B
from validate import gates as G
from validate.cli import validate as validate_cmd
from validate.result import InvariantResult, Outcome


@pytest.fixture(scope="module")
def regression_rows():
    return B.load("regression.csv")


@pytest.fixture(scope="module")
def memory_rows(regression_rows):
    return B.memory_rows() + regression_rows


def test_memory_gate_holds_on_the_committed_baselines(memory_rows):
    result = G.memory_gate(memory_rows)
    assert result.passed, result.failures
    assert len(G.ratios(memory_rows)) == len(memory_rows) >= 10


def test_memory_gate_negative_control_a_wrong_planner_term(memory_rows):
    """A planner 6% too high everywhere (as a wrong activation term would make it) fails both bounds."""
    result = G.memory_gate(memory_rows, planned=lambda cfg: int(G.planned_peak(cfg) * 1.06))
    assert not result.passed
    head = "median |planned/traced - 1| is "
    assert result.failures[0].startswith(head)
    assert 4.0 < float(result.failures[0][len(head):].rstrip("%")) < 8.0  # 6% on ratios within ~1.3% of 1
    worst = float(result.failures[1].rsplit("planned/traced ", 1)[1])
    assert 1.05 < worst < 1.06 * 1.05  # the worst row, 6% above a ratio within the 5% bound


def test_memory_gate_negative_control_one_wrong_configuration(memory_rows):
    """One configuration off by 10% passes the median but fails the worst-case bound, by name."""
    bad = memory_rows[0]
    wrong = B.config_of(bad).key()
    result = G.memory_gate(memory_rows, planned=lambda cfg: int(G.planned_peak(cfg) * (1.1 if cfg.key() == wrong
                                                                                         else 1)))
    assert not result.passed
    assert result.failures == (f"{G.describe(bad)}: planned/traced {G.planned_peak(B.config_of(bad)) * 1.1 / bad['peak_allocated_bytes']:.4f}",)


def test_memory_gate_with_no_rows_fails():
    assert not G.memory_gate([]).passed


def test_regression_gate_a_fresh_trace_equals_the_committed_bytes(regression_rows):
    """The real tracer, on every configuration of the fixed set (about 20 s)."""
    result = G.regression_gate(regression_rows)
    assert result.passed, result.failures


def test_regression_gate_negative_control_a_moved_baseline(regression_rows):
    row = dict(regression_rows[2])
    row["backward_bytes"] += 4096  # as if peft had started to keep one more 4 KiB tensor
    committed = {k: regression_rows[2][k] for k in ("peak_allocated_bytes", "forward_bytes", "backward_bytes",
                                                   "optimizer_bytes")}
    result = G.regression_gate([row], traced=lambda cfg: committed)
    assert not result.passed
    assert result.failures == (f"{G.describe(row)}: backward moved by -4,096 bytes "
                               f"({row['backward_bytes']:,} -> {committed['backward_bytes']:,})",)


def _outcome(name, holds, control_rejected):
    return Outcome("lora", InvariantResult(name, 0.0, "== 0", holds, "what was compared"),
                   InvariantResult(name, 1.0, "== 0", not control_rejected, "broken"), "a broken input")


def test_accuracy_gate_and_its_negative_controls():
    assert G.accuracy_gate(lambda: [_outcome("a", True, True), _outcome("b", True, True)]).passed
    failed = G.accuracy_gate(lambda: [_outcome("a", True, True), _outcome("b", False, True)])
    assert not failed.passed and failed.failures == ("b: what was compared",)
    blind = G.accuracy_gate(lambda: [_outcome("a", True, False)])
    assert not blind.passed and blind.failures == ("a: control not rejected",)


def test_cli_gates_json_and_bad_gate(tmp_path):
    report = tmp_path / "report.md"
    result = CliRunner().invoke(validate_cmd, ["--gates", "--gate", "memory", "--json", "-q", "--report", str(report)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] is True and [g["name"] for g in payload["gates"]] == ["memory"]
    assert "| method | configurations |" in report.read_text()
    assert "## Planned / published tokens per second (a report, not a gate)" in report.read_text()
    bad = CliRunner().invoke(validate_cmd, ["--gates", "--gate", "speed"])
    assert bad.exit_code == 2
    assert bad.stderr == "validate: unknown gate 'speed'; valid gates: memory, regression, accuracy\n"


def test_ratio_table_by_hand():
    rows = [{"method": "lora", "dtype": "bf16", "precision": "autocast", "gradient_checkpointing": 0},
            {"method": "lora", "dtype": "fp16", "precision": "autocast", "gradient_checkpointing": 1},
            {"method": "full", "dtype": "fp16", "precision": "mixed", "gradient_checkpointing": 1}]
    pairs = list(zip(rows, [1.02, 0.99, 1.0]))
    by_method = G.ratio_table(pairs)
    assert [(t["method"], t["n"], t["min_ratio"], t["max_ratio"]) for t in by_method] == [
        ("lora", 2, 0.99, 1.02), ("full", 1, 1.0, 1.0)]
    assert by_method[0]["median_abs_error"] == pytest.approx(0.015)
    assert by_method[0]["worst_abs_error"] == pytest.approx(0.02)
    groups = dict(G.REPORT_GROUPS)
    assert [t["method"] for t in G.ratio_table(pairs, groups["precision"])] == [
        "bf16 autocast", "fp16 autocast", "fp16 mixed"]
    assert [(t["method"], t["n"]) for t in G.ratio_table(pairs, groups["checkpointing"])] == [("off", 1), ("on", 2)]
