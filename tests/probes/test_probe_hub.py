"""`probe --model ORG/NAME`: a Hub model (from the stand-in, tests/hub_standin.py) is built
from its config.json alone, its own modelling code never fetched nor run."""
import json

from click.testing import CliRunner


def test_probe_measures_a_hub_model_with_remote_code_from_its_config(hub, tmp_path, torch_stack):
    from probes.cli import main

    result = CliRunner().invoke(main, ["--model", "test-org/remote-llama", "--method", "lora", "--device", "fake",
                                       "--seq-len", "32", "--output", str(tmp_path / "r.csv"), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert (row["model"], row["status"]) == ("test-org/remote-llama", "ok")
    assert row["planned_peak_allocated_bytes"] > 0 and row["peak_allocated_bytes"] > 0
    assert not [p for _, p, _ in hub.requests if p.endswith(".py")]


def test_probe_hub_errors_are_one_line_exit_2(hub, tmp_path):
    from probes.cli import main

    result = CliRunner().invoke(main, ["--model", "test-org/tiny-llama", "--revision", "v9", "--device", "fake",
                                       "--output", str(tmp_path / "r.csv")])
    assert result.exit_code == 2
    assert result.stderr == "probe: error: test-org/tiny-llama has no revision 'v9' on the Hub\n"
    assert not (tmp_path / "r.csv").exists()
