"""Shared test configuration: the `gpu` marker skips cleanly without CUDA.

Keep this file free of torch imports: planner tests must run without torch loaded.
"""
import importlib.util

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hub_server():
    """The Hub stand-in (tests/hub_standin.py), one server for the session."""
    from hub_standin import HubStandIn

    server = HubStandIn()
    yield server
    server.close()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The stand-in as the Hub for this test: HF_ENDPOINT points at it; a fresh HF cache and
    assets folder under tmp_path; no token, online, short time-outs. Yields the server with
    its request log emptied and ``cache`` (the HF hub cache folder)."""
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ASSETS_CACHE", str(tmp_path / "hf" / "assets"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    hub_server.requests.clear()
    hub_server.cache = tmp_path / "hf" / "hub"
    yield hub_server
