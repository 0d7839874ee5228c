"""Helpers of the web page's tests: `plan`'s own output through click's CliRunner, and the
environment of the servers they start."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from click.testing import CliRunner

from planner.cli import main as plan_main

ROOT = Path(__file__).resolve().parents[2]


def plan_cli(command: str):
    """Run a `plan ...` command line through click's CliRunner: (exit code, stdout, stderr)."""
    args = shlex.split(command)
    assert args[0] == "plan", command
    result = CliRunner().invoke(plan_main, args[1:])
    return result.exit_code, result.stdout, result.stderr


def plan_json(command: str) -> str:
    """What `COMMAND --json` prints."""
    code, out, err = plan_cli(command + " --json")
    assert code == 0, err
    return out


def server_env(home: Path) -> dict:
    """The child's environment: the caller's PATH (its Python), nothing else of the caller's
    (no Gradio, Hub or locale settings), analytics off, every cache in ``home``, this checkout
    first on the path."""
    keep = {k: v for k, v in os.environ.items()
            if k in ("PATH", "SYSTEMROOT", "VIRTUAL_ENV")}
    keep.update(HOME=str(home), GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(home / "gradio"),
                HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                MPLCONFIGDIR=str(home / "mpl"),
                PYTHONPATH=str(ROOT))
    return keep
