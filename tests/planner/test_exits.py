"""One way to fail for the three commands: one line on stderr, a named exit code."""
import pytest

from planner.cli import exits


def test_exit_codes():
    assert (exits.OK, exits.ERROR, exits.USAGE, exits.GATE_FAILED) == (0, 1, 2, 3)


def test_fail_prints_one_line_and_exits(capsys):
    with pytest.raises(SystemExit) as exc:
        exits.fail("unknown GPU 't5'\nsecond line", prog="plan")
    assert exc.value.code == exits.USAGE
    assert capsys.readouterr().err == "plan: error: unknown GPU 't5'\n"
    with pytest.raises(SystemExit) as exc:
        exits.fail("validate: unknown gate 'speed'", exits.ERROR)
    assert exc.value.code == exits.ERROR
    assert capsys.readouterr().err == "validate: unknown gate 'speed'\n"
