"""Exit codes of the three commands (`plan`, `probe`, `validate`) and their one way to fail.

    0 OK           done (for `probe`: oom / unsupported rows included)
    1 ERROR        an error: an unreadable results table, a busy GPU, an unexpected exception
    2 USAGE        bad usage or input: an unknown model, impossible settings
    3 GATE_FAILED  an invariant or a gate failed (`validate`)

Pure Python (the planner imports it).
"""
from __future__ import annotations

import sys
from typing import NoReturn

OK, ERROR, USAGE, GATE_FAILED = 0, 1, 2, 3


def fail(message: str, code: int = USAGE, *, prog: str | None = None) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``.

    With ``prog`` the line reads ``prog: error: message`` (``plan: error: unknown GPU ...``).
    A message of several lines keeps its first.
    """
    lines = str(message).splitlines()
    line = lines[0] if lines else ""
    print(f"{prog}: error: {line}" if prog else line, file=sys.stderr, flush=True)
    sys.exit(code)
