"""The page's settings (planner.web.form), without a server: plan's names and defaults, the
link's query string, the `plan` command and its JSON, the bounds, no file read. Pure Python."""
import json

import pytest

from planner.web import engine, form

from webtools import plan_cli, plan_json

# plan's options the page leaves out, with why: output formats and files, listings; recipe
# files (the page reads no file on the server: paste the config instead); a Hub revision (the
# page plans catalog models and pasted configs, not Hub ids, which would have the server fetch).
NOT_SETTINGS = {"plot_path", "list_models", "list_gpus", "fmt", "recipe_paths", "revision"}


def test_every_plan_setting_is_on_the_page_with_its_name_and_default():
    opts, given = engine.command_options(), engine.command_defaults()
    assert set(opts) - NOT_SETTINGS == set(form.BY_NAME) - {"config"}
    for name, option in opts.items():
        if name in NOT_SETTINGS:
            continue
        field = form.BY_NAME[name]
        assert f"--{field.key}" in option.opts, (name, option.opts)
        if name == "models":
            assert (field.default,) == given[name] == ("7b",)
        elif name == "methods":  # plan's default (none named) is every method
            assert field.default == tuple(engine.METHODS) and given[name] == ()
        elif name in ("search_batch", "search_seq"):  # the page's own: it shows both searches
            assert field.default is True and given[name] is False
        else:
            assert field.default == given[name], name
        if field.kind == "choice":
            assert field.choices == tuple(option.type.choices)


def test_negative_control_a_renamed_setting_is_seen():
    opts = engine.command_options()
    renamed = form.Field("batch_size", "batch", "int", 1)
    assert f"--{renamed.key}" not in opts["batch_size"].opts


def test_the_link_round_trips_and_holds_only_what_differs():
    assert form.to_query(form.defaults()) == ""
    query = ("model=8b&gpu=rtx4090&gpu=a100-80gb&method=lora&method=qlora&rank=8&alpha=8.5"
             "&target-modules=q_proj%2Cv_proj&batch-size=4&seq-len=2048&gradient-checkpointing=on"
             "&double-quant=off&optim=adamw_8bit&max-seq-len=off&dataset-tokens=1000000&epochs=2&calibrated=off")
    settings = form.from_query(query)
    assert settings["gpus"] == ("rtx4090", "a100-80gb") and settings["target_modules"] == "q_proj,v_proj"
    assert (settings["alpha"], settings["batch_size"], settings["double_quant"]) == (8.5, 4, False)
    assert form.from_query(form.to_query(settings)) == settings
    assert form.to_query(settings) == query
    assert form.from_query("?" + query) == settings


@pytest.mark.parametrize("query", [
    "",
    "model=8b&gpu=rtx4090&gpu=a100-80gb&method=qlora&method=lora&seq-len=2048&gradient-checkpointing=on",
    "model=70b&gpu=rtx4090&num-gpus=2&sharding=fsdp&method=qlora&gradient-checkpointing=on&offload=params",
    "model=qwen2.5-7b&gpu=l4&dataset-tokens=50000000&epochs=3&lora-dropout=0.05&alpha=8&max-seq-len=off",
    "model=Qwen%2FQwen2.5-0.5B&gpu=h100&dtype=fp16&precision=mixed&method=full&calibrated=off",
    "model=qwen3-30b-a3b&gpu=h200&method=lora&target-parameters=experts.gate_up_proj&max-batch-size=off",
    "model=llama-3.1-8b&gpu=a100-80gb&method=lora&modules-to-save=embed_tokens%2Clm_head&attn-implementation=eager",
])
def test_the_page_plans_what_its_command_prints(query):
    """The JSON of the settings is what the command box's command prints with --json, byte for byte."""
    settings = form.from_query(query)
    outcome = form.plan(settings)
    assert outcome.json() + "\n" == plan_json(form.command(settings))


def test_negative_control_other_settings_print_other_json():
    settings = form.from_query("model=8b&gpu=rtx4090")
    other = form.command(form.from_query("model=8b&gpu=rtx4090&batch-size=2"))
    assert form.plan(settings).json() + "\n" != plan_json(other)


def test_the_table_and_advice_are_what_plan_prints():
    settings = form.from_query("model=7b&gpu=t4&gpu=l4&max-batch-size=off&max-seq-len=off")
    _, out, _ = plan_cli(form.command(settings))
    assert "\n\n".join(g.table for g in form.plan(settings).groups) + "\n" == out


def test_a_pasted_config_plans_as_the_same_file_does(tmp_path):
    config = engine.resolve_model("qwen2.5-0.5b").hf_config()
    config["_name_or_path"] = "Qwen/My-Tune"
    settings = form.from_values({"config": json.dumps(config), "gpus": ["t4"]})
    command = form.command(settings)
    assert "--model My-Tune.json" in command
    (tmp_path / "My-Tune.json").write_text(json.dumps(config))
    got = json.loads(form.plan(settings).json())["plans"]
    want = json.loads(plan_json(command.replace("My-Tune.json", str(tmp_path / "My-Tune.json"))))["plans"]
    assert got == want and got[0]["model"] == "My-Tune"


def test_the_page_never_reads_a_file(tmp_path, monkeypatch):
    """plan reads a local config.json path; the page, given the same name, refuses it unread."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text(json.dumps(engine.resolve_model("qwen2.5-0.5b").hf_config()))
    monkeypatch.chdir(tmp_path)
    for name in ("mine", str(tmp_path / "mine" / "config.json"), "mine/config.json"):
        code, _, _ = plan_cli(f"plan --model {name} --gpu t4 --json")
        assert code == 0, name  # the control: plan itself reads it
        with pytest.raises(form.PageError) as exc:
            form.plan(form.from_values({"models": name}))
        assert exc.value.line.startswith(f"plan: error: unknown model {name!r}"), exc.value.line


@pytest.mark.parametrize("values", [
    {"batch_size": 0}, {"batch_size": -5}, {"seq_len": -1}, {"rank": 0}, {"num_gpus": 0}, {"alpha": -1.0},
    {"lora_dropout": 1.5}, {"epochs": 0}, {"dataset_tokens": -1}, {"models": "8x"}, {"gpus": ["t5"]},
    {"methods": ["lora"], "rank": 1024, "models": "qwen2.5-0.5b"},
    {"num_gpus": 2}, {"sharding": "fsdp"}, {"modules_to_save": "embed"},
])
def test_bad_settings_give_plans_own_line(values):
    """Below the page's bounds, a bad setting gets exactly the line `plan` prints for it (for a
    value click refuses, its Error line in plan's one-line form)."""
    with pytest.raises(form.PageError) as exc:
        form.plan(form.from_values(values))
    settings = {**form.defaults(), **values}
    code, out, err = plan_cli(form.command(settings))
    assert code == 2 and out == ""
    if err.startswith("Usage:"):
        err = "plan: error: " + err.splitlines()[-1].removeprefix("Error: ") + "\n"
    assert exc.value.line + "\n" == err


@pytest.mark.parametrize("values,message", [
    ({"batch_size": 10 ** 9}, "plan: error: --batch-size must be at most 1,024 on this page, got 1,000,000,000"),
    ({"seq_len": 1 << 20}, "plan: error: --seq-len must be at most 131,072 on this page, got 1,048,576"),
    ({"rank": 5000}, "plan: error: --rank must be at most 1,024 on this page, got 5,000"),
    ({"num_gpus": 10 ** 6}, "plan: error: --num-gpus must be at most 1,024 on this page, got 1,000,000"),
    ({"dataset_tokens": 10 ** 30}, "plan: error: --dataset-tokens must be at most 1,000,000,000,000,000 on this page, "
                                   "got 1,000,000,000,000,000,000,000,000,000,000"),
    ({"alpha": float("inf")}, "plan: error: Invalid value for '--alpha': 'inf' is not a finite number."),
    ({"batch_size": 2.5}, "plan: error: Invalid value for '--batch-size': 2.5 is not a valid integer."),
    ({"gpus": ["t4", "l4", "a10g", "h100", "h200"]}, "plan: error: the page plans at most 4 GPUs at once "
                                                     "(plan --gpu all plans every one)"),
    ({"gpus": ["all"]}, "plan: error: the page plans at most 4 GPUs at once (plan --gpu all plans every one)"),
    ({"models": "x" * 300}, "plan: error: --model is 300 characters; the page takes at most 200"),
    ({"config": " " * (65 * 1024)}, "plan: error: the pasted config.json is 66,560 bytes; the page takes at "
                                    "most 65,536 (a config.json is a few KiB)"),
    ({"dtype": "fp8"}, "plan: error: Invalid value for '--dtype': 'fp8' is not one of 'auto', 'bf16', 'fp16', 'fp32'."),
    ({"methods": ["lora", "vera"]}, "plan: error: Invalid value for '--method': 'vera' is not one of 'full', "
                                    "'lora', 'rslora', 'qlora', 'dora', 'qdora', 'all'."),
    ({"nope": 1}, "plan: error: no such setting 'nope'"),
    ({"methods": []}, "plan: error: choose at least one method (plan without --method plans every one)"),
    ({"gpus": []}, "plan: error: choose at least one GPU"),
])
def test_out_of_bounds_is_refused_before_planning(values, message):
    with pytest.raises(form.PageError) as exc:
        form.from_values(values)
    assert exc.value.line == message


def test_the_catalog_names_are_the_planners():
    """The page resolves exactly the names the catalog does (and each to the same model)."""
    keys = engine.catalog_model_keys()
    assert {"7b", "llama-2-7b", "meta-llama/llama-2-7b-hf"} <= set(keys)
    for key, name in keys.items():
        assert engine.resolve_model(key).name == name
    assert "7c" not in keys  # the control: not every name is one


def test_bounds_hold_at_the_bound():
    """The negative control of the bounds: the largest value each takes is planned."""
    settings = form.from_values({"batch_size": 1024, "seq_len": 131072, "rank": 1024, "num_gpus": 1024,
                                 "sharding": "ddp", "dataset_tokens": 10 ** 15, "epochs": 1000, "alpha": 65536.0,
                                 "models": "llama-3.1-8b", "gpus": ["t4", "l4", "a10g", "h100"]})
    assert len(form.plan(settings).plans) == 4 * 6


@pytest.mark.parametrize("config,message", [
    ("{oops", "plan: error: pasted config.json: not a readable JSON config (JSONDecodeError: Expecting property "
              "name enclosed in double quotes: line 1 column 2 (char 1))"),
    ("[1, 2]", "plan: error: pasted config.json: a config.json must hold a JSON object"),
    ('{"model_type": "llama", "x": NaN}', "plan: error: pasted config.json: not a readable JSON config "
                                          "(ValueError: NaN is not a number JSON allows)"),
    ('{"model_type": "llama", "max_position_embeddings": 1e300}',
     "plan: error: pasted config.json: 'max_position_embeddings' is 1e+300; the page takes numbers up to 2^40"),
    ('{"model_type": "llama", "num_hidden_layers": 1' + "0" * 20 + "}",
     "plan: error: pasted config.json: 'num_hidden_layers' is 1e+20; the page takes numbers up to 2^40"),
    ("[" * 5000 + "]" * 5000, "plan: error: pasted config.json: not a readable JSON config (nested too deeply)"),
    ('{"model_type": "bert"}', "plan: error: pasted-config: model_type 'bert' is not a decoder-only language model; "
                               "the planner plans decoder-only causal language models"),
])
def test_a_bad_paste_gets_one_line(config, message):
    with pytest.raises(form.PageError) as exc:
        form.plan(form.from_values({"config": config}))
    assert exc.value.line == message


def test_a_paste_of_the_catalog_config_is_planned():
    """The negative control of the paste checks: the catalog's own config.json passes them."""
    config = json.dumps(engine.resolve_model("7b").hf_config())
    pasted = form.plan(form.from_values({"config": config})).plans[0]
    catalog = form.plan(form.defaults()).plans[0]
    assert pasted.model == "pasted-config" and catalog.model == "llama-2-7b"
    assert (pasted.device_used_bytes, pasted.total_params) == (catalog.device_used_bytes, catalog.total_params)


@pytest.mark.parametrize("query,message", [
    ("batch-size=abc", "plan: error: Invalid value for '--batch-size': 'abc' is not a valid integer."),
    ("batch-size=1&batch-size=2", "plan: error: --batch-size is given twice"),
    ("plot=%2Ftmp%2Fx.png", "plan: error: no such setting 'plot' (the link's settings are plan's option names)"),
    ("gradient-checkpointing=maybe",
     "plan: error: Invalid value for '--gradient-checkpointing': 'maybe' is not on or off."),
    ("&".join(f"gpu=t4" for _ in range(65)), "plan: error: the link holds more than 64 settings"),
    ("config=" + "x" * (300 * 1024), "plan: error: the settings are 307,207 bytes; the page takes at most 262,144"),
])
def test_a_bad_link_gets_one_line(query, message):
    with pytest.raises(form.PageError) as exc:
        form.from_query(query)
    assert exc.value.line == message
