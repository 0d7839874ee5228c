"""The `validate` command: exit codes, JSON contract, table, usage errors."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from validate import cli
from validate.result import InvariantResult, Outcome

RESULT_KEYS = {"name", "group", "measured", "bound", "passed", "detail", "control"}


def invoke(*args):
    return CliRunner().invoke(cli.validate, list(args))


def test_unknown_group_is_a_usage_error_with_one_line():
    result = invoke("--only", "nosuch")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuch" in lines[0]
    assert all(group in lines[0] for group in ("lora", "dora", "quant", "planner"))


def test_console_script_usage_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-c", "from validate.cli import main; main()", "--only", "loar"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "valid groups: lora, dora, quant, planner" in proc.stderr
    assert proc.stdout == ""


def test_unknown_option_exits_2():
    assert invoke("--gatez").exit_code == 2


def test_json_contract_on_a_group(tmp_path):
    result = invoke("--only", "lora", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert set(data) == {"results", "passed"}
    assert data["passed"] is True
    assert len(data["results"]) >= 10
    for row in data["results"]:
        assert set(row) == RESULT_KEYS
        assert row["group"] == "lora" and row["passed"] is True
        assert set(row["control"]) == {"broken", "measured", "rejected", "detail"}
        assert row["control"]["rejected"] is True
        assert isinstance(row["measured"], (int, float))
    assert "invariants hold" in result.stderr  # progress goes to stderr


def test_table_is_the_default_and_names_every_invariant():
    result = invoke("--only", "dora", "-q")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[0].split()[:4] == ["invariant", "measured", "bound", "pass"]
    assert "dora.forward_matches_reference[perturbed]" in result.stdout
    assert result.stderr == ""


def _fake_outcome(passed: bool, rejected: bool) -> Outcome:
    return Outcome("quant", InvariantResult("quant.fake", 1.0, "== 0", passed, "fake"),
                   InvariantResult("quant.fake", 2.0, "== 0", not rejected, "fake control"), "broken input")


@pytest.mark.parametrize("passed,rejected,code", [(True, True, 0), (False, True, 3), (True, False, 3)])
def test_exit_status_follows_results_and_controls(monkeypatch, passed, rejected, code):
    monkeypatch.setattr(cli, "run", lambda groups, progress: [_fake_outcome(passed, rejected)])
    result = invoke("--json", "-q")
    assert result.exit_code == code
    assert json.loads(result.stdout)["passed"] is (code == 0)
    table = invoke("-q")
    assert table.exit_code == code
    assert ("NOT REJECTED" in table.stdout) is (not rejected)


def test_an_invariant_that_raises_exits_1(monkeypatch):
    from validate.invariants import Errored

    monkeypatch.setattr(cli, "run", lambda groups, progress: [Errored("lora", "lora.fake", "RuntimeError: boom", "")])
    result = invoke("-q")
    assert result.exit_code == 1
    assert "lora.fake raised RuntimeError: boom" in result.stderr


def test_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys):
    def boom(groups, progress):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "run", boom)
    with pytest.raises(SystemExit) as exc:
        cli.main(["-q"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "validate: error: RuntimeError: disk on fire"


def test_importing_the_command_imports_no_torch():
    """Usage errors and --help answer without loading the torch stack."""
    code = ("import sys, validate.cli, validate.invariants\n"
            "print(','.join(m for m in ('torch', 'peft', 'bitsandbytes', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == ""
