"""The web page's server and browser tests run against a real `plan-ui` server in a child
process on a free port of 127.0.0.1.

The server runs with an environment of its own (no GRADIO_*/HF_* variables of the caller, a
temporary home and working folder), so that what the tests see does not depend on who runs
them. Importing this file needs neither gradio nor a browser.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from webtools import server_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The URL of a `plan-ui` server (python -m planner.web) started for these tests."""
    pytest.importorskip("gradio", reason="the web page needs the ui extra (pip install -e '.[ui]')")
    home = tmp_path_factory.mktemp("plan-ui-home")
    port = _free_port()
    log = open(home / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "planner.web", "--port", str(port)], cwd=home,
                            env=server_env(home), stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            log.seek(0)
            text = log.read()
            if f"plan-ui: serving the planner at {url}" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plan-ui did not start:\n{text[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def api(server):
    """The page's API through gradio_client: query string -> {"json", "error", "command", "query"}."""
    from gradio_client import Client

    client = Client(server, verbose=False, download_files=False)

    def call(query: str) -> dict:
        out = client.predict(query, api_name="/plan")
        return json.loads(out) if isinstance(out, str) else out

    yield call
    close = getattr(client, "close", None)
    if close:
        close()
