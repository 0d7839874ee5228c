"""`plan-ui` (its options, its help, README's lines) and `app.py`, the Space's entry point."""
import re
import runpy
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.web.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_says_why_a_command_of_its_own_and_the_default_binds_this_machine():
    result = CliRunner().invoke(main, ["--help"], prog_name="plan-ui")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "A command of its own rather than `plan serve`" in text
    assert "[default: 127.0.0.1]" in text and "[default: 7860;" in text


def test_readmes_plan_ui_lines_parse():
    lines = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()
             if line.startswith("plan-ui")]
    assert "plan-ui" in lines and len(lines) >= 2
    for line in lines:
        args = shlex.split(line)[1:]
        ctx = main.make_context("plan-ui", args)  # parses, does not serve
        assert set(ctx.params) == {"host", "port"}


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),
    (["--serve"], "--serve"),
])
def test_bad_options_are_refused(args, message):
    result = CliRunner().invoke(main, args, prog_name="plan-ui")
    assert result.exit_code == 2 and message in result.stderr


def test_app_py_builds_the_page_with_its_api_without_serving():
    gr = pytest.importorskip("gradio")
    space = runpy.run_path(str(ROOT / "app.py"), run_name="space")
    assert isinstance(space["demo"], gr.Blocks)
    api = space["demo"].get_api_info()["named_endpoints"]
    assert list(api) == ["/plan"]
    assert re.search(r"plan --json", api["/plan"]["description"])
