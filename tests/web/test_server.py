"""The page's API against a real `plan-ui` server, through gradio_client: the plan it returns is
what `plan --json` prints for the same settings, and bad input gets its one line while the
server goes on serving."""
import json
import urllib.request

import pytest
from webtools import plan_cli, plan_json

pytest.importorskip("gradio_client", reason="the web page needs the ui extra (pip install -e '.[ui]')")

SETTINGS = [
    "model=7b&gpu=t4",
    "model=8b&gpu=rtx4090&gpu=a100-80gb&method=qlora&method=lora&seq-len=2048&gradient-checkpointing=on",
    "model=70b&gpu=rtx4090&num-gpus=2&sharding=fsdp&method=qlora&gradient-checkpointing=on&offload=params",
    "model=qwen2.5-7b&gpu=l4&dataset-tokens=50000000&epochs=3&lora-dropout=0.05&alpha=8&max-seq-len=off",
]


def test_the_server_prints_its_url_and_binds_this_machine_only(server):
    assert server.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(server, timeout=30) as page:
        assert page.status == 200
        assert "ftmem plan" in page.read().decode()


@pytest.mark.parametrize("query", SETTINGS)
def test_the_api_returns_what_plan_json_prints(api, query):
    out = api(query)
    assert out["error"] == ""
    assert out["command"].startswith("plan --model ")
    assert out["json"] + "\n" == plan_json(out["command"])


def test_negative_control_the_api_follows_the_settings(api):
    one, two = api("model=7b&gpu=t4"), api("model=7b&gpu=t4&batch-size=2")
    assert one["json"] != two["json"]
    assert json.loads(two["json"])["plans"][0]["settings"]["batch_size"] == 2
    assert one["json"] + "\n" != plan_json(two["command"])


BAD = [
    # (what is tried, query, the line the API answers)
    ("oversized paste", "config=" + "%20" * (65 * 1024),
     "plan: error: the pasted config.json is 66,560 bytes; the page takes at most 65,536 (a config.json is a few KiB)"),
    ("a path", "model=%2Fetc%2Fpasswd",
     "plan: error: unknown model '/etc/passwd': not a catalog HF id (the page reads no files on the server: "
     "paste the config.json's text instead)"),
    ("a relative path", "model=data",
     "plan: error: unknown model 'data'; see `plan --list-models`"),
    ("a negative batch", "batch-size=-4", "plan: error: batch size must be at least 1, got -4"),
    ("a negative sequence", "seq-len=-1", "plan: error: sequence length must be at least 1, got -1"),
    ("a huge batch", "batch-size=1000000000000",
     "plan: error: --batch-size must be at most 1,024 on this page, got 1,000,000,000,000"),
    ("a huge sequence", "seq-len=99999999",
     "plan: error: --seq-len must be at most 131,072 on this page, got 99,999,999"),
    ("a huge number of GPUs", "num-gpus=100000&sharding=fsdp",
     "plan: error: --num-gpus must be at most 1,024 on this page, got 100,000"),
    ("a huge context in a paste", "config=%7B%22model_type%22%3A%22llama%22%2C%22max_position_embeddings%22%3A1e300%7D",
     "plan: error: pasted config.json: 'max_position_embeddings' is 1e+300; the page takes numbers up to 2^40"),
    ("an unknown model", "model=llama-9-7b",
     "plan: error: unknown model 'llama-9-7b' (did you mean llama-2-7b, llama-2-70b, llama-3.3-70b?); "
     "see `plan --list-models`"),
    ("a Hub id not in the catalog", "model=acme%2Fxyz-0b",
     "plan: error: unknown model 'acme/xyz-0b': not a catalog HF id (the page reads no files on the server: "
     "paste the config.json's text instead)"),
    ("an unknown GPU", "gpu=t5", "plan: error: unknown GPU 't5' (did you mean t4?); see `plan --list-gpus`"),
    ("not a number", "rank=sixteen", "plan: error: Invalid value for '--rank': 'sixteen' is not a valid integer."),
    ("a file option", "plot=%2Ftmp%2Fx.png",
     "plan: error: no such setting 'plot' (the link's settings are plan's option names)"),
]


@pytest.mark.parametrize("what,query,line", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_line_and_the_next_request_works(api, what, query, line):
    out = api(query)
    assert (out["error"], out["json"]) == (line, "")
    good = api("model=qwen2.5-0.5b&gpu=t4&method=lora")
    assert good["error"] == "" and json.loads(good["json"])["plans"][0]["model"] == "qwen2.5-0.5b"


def test_the_api_line_is_plans_line_where_plan_has_one(api):
    """Where the page lets plan decide (no page bound, no path), its line is plan's own."""
    for query in ("batch-size=-4", "model=llama-9-7b", "gpu=t5", "rank=5000&method=lora&model=qwen2.5-0.5b"):
        out = api(query)
        if out["command"]:  # the settings parse: plan can be asked the same
            code, stdout, stderr = plan_cli(out["command"])
            assert code == 2 and stdout == "" and stderr == out["error"] + "\n", query
        else:  # refused by a page bound before planning
            assert "on this page" in out["error"], query


def test_a_taken_port_is_one_line_exit_1(server, tmp_path):
    """A second plan-ui on the server's port: plan-ui's one line, exit 1; the first serves on."""
    import subprocess
    import sys

    from webtools import server_env

    port = server.rstrip("/").rsplit(":", 1)[1]
    done = subprocess.run([sys.executable, "-m", "planner.web", "--port", port], cwd=tmp_path,
                          env=server_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"plan-ui: error: cannot serve on 127.0.0.1:{port}: ")
    assert done.stderr.count("\n") == 1
    with urllib.request.urlopen(server, timeout=30) as page:
        assert page.status == 200
