"""README.md's commands are the ones that work: examples run, output matches, CI agrees."""
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from planner.cli.command import main as plan_main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def console_commands():
    """Every `$ ...` line of the README's console blocks."""
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def last_segment(command):
    return command.split("&&")[-1].strip()


def test_readme_has_the_two_setup_commands():
    commands = console_commands()
    assert "pip install -e . && plan --model 7b --gpu t4" in commands
    tests = [c for c in commands if "pytest" in c]
    assert tests and tests[0].startswith("pip install torch==2.13.0 && ")


def test_ci_runs_exactly_the_readme_test_command():
    test_command = last_segment(next(c for c in console_commands() if "pytest" in c))
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_command)}\b", ci, flags=re.M), test_command
    assert ci.index("torch==2.13.0") < ci.index("-e '.[torch,test,plot]'")


def test_every_plan_example_runs(tmp_path):
    plan_commands = [last_segment(c) for c in console_commands() if last_segment(c).startswith("plan")]
    assert len(plan_commands) >= 5
    for command in plan_commands:
        args = [str(tmp_path / Path(a).name) if a.startswith("/tmp/") else str(ROOT / a) if a.startswith("tests/")
                else a for a in shlex.split(command)[1:]]
        result = CliRunner().invoke(plan_main, args)
        assert result.exit_code == 0, (command, result.stderr)
        assert result.stdout


def hub_examples():
    """The illustrative `plan --model ORG/NAME` lines (a plain block: they need the Hub)."""
    blocks = re.findall(r"\n```\n((?:plan .*\n)+)```", README)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith("plan --model ") and "/" in line.split()[2]]


def test_hub_examples_run_against_the_stand_in(hub):
    """Each Hub example with its model id swapped for the stand-in's tiny Llama: the same
    flags, through the real huggingface_hub client, no network."""
    examples = hub_examples()
    assert len(examples) == 2
    for command in examples:
        args = shlex.split(command)[1:]
        args[args.index("--model") + 1] = "test-org/tiny-llama"
        result = CliRunner().invoke(plan_main, args)
        assert result.exit_code == 0, (command, result.stderr)
        assert "note: parameters: planned 202,048, equal to the checkpoint's" in result.stdout


def test_recipe_examples_are_run_above():
    recipes = [c for c in console_commands() if "--recipe" in c]
    assert len(recipes) == 4 and all((ROOT / a).is_file() for c in recipes for a in shlex.split(c) if a.startswith("tests/"))


def test_callback_snippet_uses_real_parameters():
    """The README's MemoryPlanCallback snippet calls the class and install() with parameters
    they take (it needs a model and data to run; tests/probes/test_callback.py runs one)."""
    import ast
    import inspect

    from probes.callback import MemoryPlanCallback

    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if "MemoryPlanCallback" in b]
    taken = set(inspect.signature(MemoryPlanCallback).parameters)
    calls = [n for n in ast.walk(ast.parse(block)) if isinstance(n, ast.Call)
             and ast.unparse(n.func) in ("MemoryPlanCallback", "MemoryPlanCallback.install")]
    assert len(calls) == 2
    for call in calls:
        assert {k.arg for k in call.keywords} <= taken, ast.unparse(call)


def test_example_output_is_what_plan_prints():
    match = re.search(r"```console\n\$ plan --model 7b --gpu t4\n(.*?)```", README, flags=re.S)
    assert match, "README lost its example output"
    shown = match.group(1)
    actual = CliRunner().invoke(plan_main, ["--model", "7b", "--gpu", "t4"]).stdout
    assert shown == actual


def torch_examples():
    return [last_segment(c) for c in console_commands() if last_segment(c).split()[0] in ("probe", "validate")]


# Two README examples take minutes on a 2-core CPU without native bf16: a real CPU step of a
# catalog model (a bf16 step is emulated there) and a sweep of every method (12 traces of a
# 24-layer model, about 2.5 minutes). The test runs them in a fast form, on this tiny Llama
# config instead of the named model; benchmarks/readme_examples.py runs them verbatim and
# times them.
TINY_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "tie_word_embeddings": False}


def fast_form(args: list[str], tiny_config: Path, cut_dir: Path | None = None) -> list[str]:
    """``args`` of a README example, with --model swapped for the tiny config in a real CPU
    probe or a sweep of every method (a sweep over its first batch size only), and (given ``cut_dir``) for the same catalog model cut
    to 2 decoder layers, its real widths kept, in any other probe (a fake trace of a 7B model
    takes half a minute on 2 cores; benchmarks/readme_examples.py runs them verbatim)."""
    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None

    if args[0] != "probe":
        return args
    out = list(args)
    if value("--device") == "cpu" or value("--method") == "all":
        out[out.index("--model") + 1] = str(tiny_config)
        if value("--batch-size"):  # a sweep: its first batch size (the list is parsed the same way)
            out[out.index("--batch-size") + 1] = value("--batch-size").split(",")[0]
    elif cut_dir is not None:
        import json

        from planner import get_model
        from validate.baselines import spec_for

        name = get_model(value("--model")).name
        config = cut_dir / f"{name}-2L" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(spec_for(f"{name}@2L").hf_config()))
        out[out.index("--model") + 1] = str(config)
    return out


def test_fast_form_swaps_only_real_cpu_probes(tmp_path):
    tiny = tmp_path / "config.json"
    fake = ["probe", "--model", "7b", "--device", "fake"]
    assert fast_form(fake, tiny) == fake
    assert fast_form(["probe", "--method", "all", "--model", "7b"], tiny)[-1] == str(tiny)
    assert fast_form(["probe", "--method", "all", "--model", "7b", "--batch-size", "1,2"], tiny)[-3:] == [
        str(tiny), "--batch-size", "1"]
    assert fast_form(["probe", "--model", "7b", "--device", "cpu"], tiny) == ["probe", "--model", str(tiny),
                                                                            "--device", "cpu"]
    cut = fast_form(fake, tiny, tmp_path)
    assert cut[2] == str(tmp_path / "llama-2-7b-2L" / "config.json")
    import json

    config = json.loads(Path(cut[2]).read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (2, 4096, 32000)


def test_probe_and_validate_examples_run(tmp_path, monkeypatch):
    """Every `probe` and `validate` example through its click command, in this process (the
    torch stack imported once; a real CPU probe in its fast form); files go to a temporary
    folder so that the committed results table is never touched."""
    import json

    from click.testing import CliRunner

    from probes.cli import main as probe
    from validate.cli import validate

    tiny = tmp_path / "tiny" / "config.json"
    tiny.parent.mkdir()
    tiny.write_text(json.dumps(TINY_LLAMA))
    examples = torch_examples()
    assert {e.split()[0] for e in examples} == {"probe", "validate"}
    for i, command in enumerate(examples):
        args = shlex.split(command)
        for j, arg in enumerate(args):
            if arg.startswith("/tmp/"):
                args[j] = str(tmp_path / f"{i}-{Path(arg).name}")
        args = fast_form(args, tiny, tmp_path)
        if args[0] == "probe" and "--output" not in args:
            args += ["--output", str(tmp_path / f"{i}-rows.csv")]
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke({"probe": probe, "validate": validate}[args[0]], args[1:], prog_name=args[0])
        assert result.exit_code == 0, (command, result.stderr[-2000:], result.exception)
        assert result.stdout.strip(), command


def test_readme_images_exist():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert images
    for image in images:
        assert (ROOT / image).is_file(), image
