"""The planner must not import torch (nor pandas): it is the instant, offline path. Nor
huggingface_hub nor yaml for a catalog model: they load only for a Hub id or a recipe."""
import subprocess
import sys

CHECK = """
import sys
from planner.cli.command import main
try:
    main(["--model", "7b", "--gpu", "t4", "--max-batch-size"], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "pandas", "numpy", "transformers", "peft", "bitsandbytes",
                               "huggingface_hub", "yaml")
                   if m in sys.modules)
    print("HEAVY:", ",".join(heavy))
"""


def run(code):
    """Run ``code`` in a fresh interpreter; return (stdout, the heavy modules it had loaded)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy = out.rstrip().rsplit("HEAVY:", 1)[1].strip()
    return out, heavy


def test_plan_imports_no_torch():
    out, heavy = run(CHECK)
    assert "recommendation:" in out
    assert heavy == ""


def test_negative_control_the_check_sees_torch():
    _, heavy = run("import torch\n" + CHECK)
    assert "torch" in heavy.split(",")


def test_negative_control_the_check_sees_the_hub_client():
    _, heavy = run("import huggingface_hub, yaml\n" + CHECK)
    assert heavy.split(",") == ["huggingface_hub", "yaml"]
