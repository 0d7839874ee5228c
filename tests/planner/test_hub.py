"""Hub model ids (planner.model.hub) against the local Hub stand-in (tests/hub_standin.py), through
the real huggingface_hub client: config.json at a revision, the safetensors count compared
exactly, the cache first, offline, and every failure as one line with nothing half-written."""
import hashlib
import time

import pytest
from click.testing import CliRunner

from planner import get_model, plan
from planner.model import counts
from planner.cli.command import main as plan_main
from planner.model.hub import HubError, Settings, is_repo_id

TINY_FULL_COMMIT = hashlib.sha1(b"tiny-llama main").hexdigest()  # the stand-in's main commit
TINY_COMMIT = TINY_FULL_COMMIT[:12]


def cached_files(cache):
    """Files in the HF cache (lock files aside: huggingface_hub takes them before a download)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and ".locks" not in p.parts and p.name != "CACHEDIR.TAG")


@pytest.mark.parametrize("name,expected", [
    ("HuggingFaceTB/SmolLM2-1.7B", True), ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", True),
    ("google/gemma-3-27b-it", True), ("test-org/tiny-llama", True),
    ("./config.json", False), ("a/b/c", False), ("/abs/path", False), ("org/model.json", False),
    ("org--x/name", False), ("org/na..me", False), ("7b", False), ("org/", False),
])
def test_is_repo_id(name, expected):
    assert is_repo_id(name) is expected


def test_settings_are_read_when_resolving_not_at_import():
    s = Settings.from_env({"HF_HOME": "/h", "HF_ENDPOINT": "http://x/", "HF_HUB_OFFLINE": "1",
                           "HF_HUB_ETAG_TIMEOUT": "0.5", "HF_TOKEN": "t"})
    assert (s.endpoint, s.offline, s.cache_dir, s.assets_dir, s.etag_timeout, s.download_timeout, s.token) == (
        "http://x", True, "/h/hub", "/h/assets", 0.5, 10.0, "t")
    default = Settings.from_env({"HOME": "/u"})
    assert (default.endpoint, default.offline, default.token, default.where) == (None, False, None, "the Hub")
    with pytest.raises(HubError, match="HF_HUB_ETAG_TIMEOUT='soon' must be a number of seconds"):
        Settings.from_env({"HF_HUB_ETAG_TIMEOUT": "soon"})


def test_a_hub_model_is_planned_with_its_count_checked_exactly(hub):
    spec = get_model("test-org/tiny-llama")
    assert (spec.name, spec.hf_id, spec.num_layers, spec.hidden_size, spec.vocab_size) == (
        "test-org/tiny-llama", "test-org/tiny-llama", 2, 64, 1000)
    assert spec.published_params == counts.total_params(spec) == 202_048
    assert spec.notes == (
        f"test-org/tiny-llama: config.json at revision main (commit {TINY_COMMIT}) from the Hub; no weights downloaded",
        "parameters: planned 202,048, equal to the checkpoint's (BF16 202,048; 1 safetensors file)")
    assert plan(spec, "t4").notes[:2] == spec.notes
    # no weights: the safetensors file is read by a range request of its header only
    gets = [(path, rng) for method, path, rng in hub.requests if method == "GET" and path.endswith(".safetensors")]
    assert gets == [(f"/test-org/tiny-llama/resolve/{TINY_FULL_COMMIT}/model.safetensors", "bytes=0-100000")]
    files = cached_files(hub.cache)
    blobs = [f for f in files if "/blobs/" in f]
    assert len(blobs) == 1  # config.json only
    assert files == sorted([*blobs, "models--test-org--tiny-llama/refs/main",
                            f"models--test-org--tiny-llama/snapshots/{TINY_FULL_COMMIT}/config.json"])


def test_negative_control_a_checkpoint_that_differs_is_said_to_differ(hub):
    spec = get_model("test-org/remote-llama")
    assert spec.notes[1] == ("parameters: planned 202,048, the checkpoint holds 202,058 (BF16 202,058; "
                             "1 safetensors file), +10")
    assert spec.published_params == 202_058


def test_sharded_checkpoint_counts_every_shard(hub):
    spec = get_model("test-org/sharded-qwen")
    assert spec.tie_word_embeddings
    assert spec.notes[1] == "parameters: planned 163,392, equal to the checkpoint's (BF16 163,392; 2 safetensors files)"
    shard_gets = sorted((p.rsplit("/", 1)[1], r) for m, p, r in hub.requests if m == "GET" and p.endswith("safetensors"))
    assert shard_gets == [("model-00001-of-00002.safetensors", "bytes=0-100000"),
                          ("model-00002-of-00002.safetensors", "bytes=0-100000")]


def test_revision_is_read(hub):
    v2 = get_model("test-org/tiny-llama", "v2")
    main = get_model("test-org/tiny-llama")
    assert (v2.num_layers, main.num_layers) == (3, 2)
    assert v2.notes[1] == "parameters: planned 239,040, equal to the checkpoint's (BF16 239,040; 1 safetensors file)"
    assert "at revision v2 (commit " in v2.notes[0]


def test_the_cache_comes_first_then_offline_works(hub, monkeypatch):
    get_model("test-org/tiny-llama")
    hub.requests.clear()
    again = get_model("test-org/tiny-llama")
    assert hub.requests == []  # config and the checkpoint's count from the caches: no request
    assert again.notes == (
        f"test-org/tiny-llama: config.json at revision main (commit {TINY_COMMIT}) from the local HF cache; "
        "no weights downloaded",
        "parameters: planned 202,048, equal to the checkpoint's (BF16 202,048; 1 safetensors file)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get_model("test-org/tiny-llama").notes == again.notes
    assert hub.requests == []
    with pytest.raises(HubError) as err:  # negative control: offline and not cached
        get_model("test-org/sharded-qwen")
    assert str(err.value) == (f"test-org/sharded-qwen@main: HF_HUB_OFFLINE is set and its config.json is not in "
                              f"the local HF cache ({hub.cache}): run once online, or unset HF_HUB_OFFLINE")


def test_the_environment_now_decides_offline_not_the_import(hub, monkeypatch):
    """huggingface_hub reads HF_HUB_OFFLINE once, at its import: a process that imported it
    offline (an earlier resolve with HF_HUB_OFFLINE=1) still resolves online once the variable is
    unset (the stand-in answers); the library's switch is as it was afterwards. Negative control:
    the library's own switch, left on, refuses the request."""
    import huggingface_hub as hf
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as if imported with HF_HUB_OFFLINE=1
    model = get_model("test-org/tiny-llama")
    assert counts.total_params(model) == 202_048 and hub.requests
    assert constants.HF_HUB_OFFLINE is True
    served = len(hub.requests)
    with pytest.raises(hf.errors.LocalEntryNotFoundError):  # offline, nothing cached there: no request
        hf.hf_hub_download("test-org/tiny-llama", "config.json", cache_dir=str(hub.cache / "other"),
                           endpoint=hub.url)
    assert len(hub.requests) == served


def test_a_fractional_timeout_does_not_break_the_import(hub):
    """HF_HUB_ETAG_TIMEOUT=0.5 (seconds, as Settings reads it) in a fresh process, whose first
    import of huggingface_hub parses it: the plan resolves from the stand-in. Negative control:
    importing huggingface_hub itself under that variable fails."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_ETAG_TIMEOUT": "0.5", "HF_HUB_DOWNLOAD_TIMEOUT": "0.5"}
    run = subprocess.run([sys.executable, "-m", "planner.cli", "--model", "test-org/tiny-llama", "--gpu", "t4",
                          "--method", "lora", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert '"total_params": 202048' in run.stdout
    control = subprocess.run([sys.executable, "-c", "import huggingface_hub.constants"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert control.returncode != 0 and "invalid literal for int()" in control.stderr


def test_offline_with_a_config_cached_but_no_count_says_so(hub, monkeypatch):
    import shutil

    get_model("test-org/tiny-llama")
    shutil.rmtree(hub.cache.parent / "assets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get_model("test-org/tiny-llama").notes[1] == (
        "parameters: planned 202,048; the checkpoint's count is not checked: HF_HUB_OFFLINE is set and its "
        "safetensors headers were not read before")


def test_checkpoint_dtype_and_remote_code_notes(hub):
    fp8 = get_model("test-org/fp8-llama")
    assert fp8.notes[2] == (
        "the checkpoint stores its weights as FP8 (BF16 128,320, F8_E4M3 73,728; 1 safetensors file): they do not "
        "train as stored; planned as the model dequantized to the compute dtype (full, LoRA, DoRA) or bitsandbytes "
        "4-bit (QLoRA, QDoRA)")
    assert "quantization_config" not in fp8.hf_config()
    tiny = get_model("test-org/tiny-llama")
    assert len(tiny.notes) == 2  # negative control: a BF16 checkpoint gets no dtype note
    remote = get_model("test-org/remote-llama")
    assert remote.notes[2] == ("test-org/remote-llama ships its own modelling code (auto_map): planned from its "
                               "config fields as model_type 'llama'; none of its code is run")
    assert "auto_map" not in remote.hf_config()
    assert not [p for _, p, _ in hub.requests if p.endswith(".py")]


def test_no_safetensors_is_a_note_not_a_failure(hub):
    assert get_model("test-org/no-weights").notes[1] == (
        "parameters: planned 202,048; the checkpoint's count is not checked: the repo has no safetensors weights "
        "(model.safetensors or its index)")


def test_gated_repo_needs_a_token(hub, monkeypatch):
    with pytest.raises(HubError) as err:
        get_model("test-org/gated")
    assert str(err.value) == ("test-org/gated is a gated model: accept its licence on its Hub page, then set "
                              "HF_TOKEN to a token of that account")
    assert cached_files(hub.cache) == []
    monkeypatch.setenv("HF_TOKEN", "hf_granted")  # negative control: with access it plans
    assert get_model("test-org/gated").num_layers == 2


@pytest.mark.parametrize("name,revision,message", [
    ("test-org/missing", None, "no model 'test-org/missing' on the Hub (a private repo needs HF_TOKEN); catalog "
                               "models: plan --list-models"),
    ("test-org/tiny-llama", "v9", "test-org/tiny-llama has no revision 'v9' on the Hub"),
])
def test_missing_repo_or_revision(hub, name, revision, message):
    with pytest.raises(HubError) as err:
        get_model(name, revision)
    assert str(err.value) == message
    assert cached_files(hub.cache) == []


def test_a_slow_hub_times_out_and_writes_nothing(hub, monkeypatch):
    hub.slow_seconds = 0.4
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "0.1")
    start = time.perf_counter()
    with pytest.raises(HubError) as err:
        get_model("test-org/slow")
    assert time.perf_counter() - start < 0.4
    assert str(err.value) == (f"the Hub ({hub.url}) did not answer for test-org/slow within 0.1 s "
                              "(HF_HUB_ETAG_TIMEOUT): retry, raise HF_HUB_ETAG_TIMEOUT, or set HF_HUB_OFFLINE=1 "
                              "to plan from the local cache")
    assert cached_files(hub.cache) == []
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")  # negative control: a patient client gets the model
    assert get_model("test-org/slow").num_layers == 2


def test_unreachable_hub_is_one_line(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(HubError) as err:
        get_model("test-org/tiny-llama")
    assert str(err.value).startswith("cannot reach the Hub (http://127.0.0.1:9) for test-org/tiny-llama, and it is "
                                     "not in the local HF cache: ")
    assert "\n" not in str(err.value)


def test_plan_cli_takes_a_hub_id(hub):
    result = CliRunner().invoke(plan_main, ["--model", "test-org/tiny-llama", "--gpu", "t4", "--method", "lora"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan: model=test-org/tiny-llama gpu=t4 (15.00 GiB) batch_size=1 seq_len=512 ")
    assert lines[1] == (f"note: test-org/tiny-llama: config.json at revision main (commit {TINY_COMMIT}) from the "
                        "Hub; no weights downloaded")
    assert lines[2] == "note: parameters: planned 202,048, equal to the checkpoint's (BF16 202,048; 1 safetensors file)"
    as_json = CliRunner().invoke(plan_main, ["--model", "test-org/tiny-llama", "--revision", "v2", "--method",
                                             "lora", "--json"])
    import json

    (only,) = json.loads(as_json.stdout)["plans"]
    assert (only["model"], only["total_params"]) == ("test-org/tiny-llama", 239_040)


@pytest.mark.parametrize("name,env,message", [
    ("test-org/gated", {}, "plan: error: test-org/gated is a gated model: accept its licence on its Hub page, "
                           "then set HF_TOKEN to a token of that account\n"),
    ("test-org/missing", {}, "plan: error: no model 'test-org/missing' on the Hub (a private repo needs HF_TOKEN); "
                             "catalog models: plan --list-models\n"),
    ("test-org/slow", {"HF_HUB_ETAG_TIMEOUT": "0.1"}, "plan: error: the Hub ({url}) did not answer for test-org/slow "
     "within 0.1 s (HF_HUB_ETAG_TIMEOUT): retry, raise HF_HUB_ETAG_TIMEOUT, or set HF_HUB_OFFLINE=1 to plan from the "
     "local cache\n"),
    ("test-org/tiny-llama", {"HF_HUB_OFFLINE": "1"}, "plan: error: test-org/tiny-llama@main: HF_HUB_OFFLINE is set "
     "and its config.json is not in the local HF cache ({cache}): run once online, or unset HF_HUB_OFFLINE\n"),
])
def test_plan_cli_hub_errors_are_one_line_exit_2(hub, monkeypatch, name, env, message):
    hub.slow_seconds = 0.4
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(plan_main, ["--model", name, "--method", "lora"])
    assert result.exit_code == 2
    assert result.stderr == message.format(url=hub.url, cache=hub.cache)
    assert result.stdout == ""
