"""`plan --plot`: the drawn bars are the plans' components, and add up to what `plan` prints."""
import dataclasses
import json
import sys

import pytest
from click.testing import CliRunner

from planner import TrainSpec, plan
from planner.cli.command import main as plan_main
from planner.cli.plot import OFF_DEVICE, PlotError, figure, panels
from planner.units import GIB

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plans():
    out = []
    for gpu in ("t4", "rtx4090"):
        for method in ("qlora", "lora", "full"):
            out.append(plan("llama-2-7b", gpu, TrainSpec(method=method), calibrations={}))
    return out


def test_one_panel_per_model_and_gpu_in_order(plans):
    drawn = panels(plans)
    assert [(p.model, p.gpu, p.methods) for p in drawn] == [
        ("llama-2-7b", "t4", ("qlora", "lora", "full")), ("llama-2-7b", "rtx4090", ("qlora", "lora", "full"))]
    assert [p.gpu_memory_bytes for p in drawn] == [plans[0].gpu_memory_bytes, plans[3].gpu_memory_bytes]


def test_segments_are_the_components_and_stack_to_device_used(plans):
    panel = panels(plans)[0]
    group = plans[:3]
    for i, key in enumerate(panel.keys):
        assert panel.segments[i] == tuple(p.components.get(key, 0) for p in group)
    for j, p in enumerate(group):
        assert sum(row[j] for row in panel.segments) == p.device_used_bytes == panel.device_used[j]
    # every non-zero component is drawn, and no all-zero one
    nonzero = {k for p in group for k, v in p.components.items() if v}
    assert set(panel.keys) == nonzero
    assert panel.keys[0] == "weights/base" and panel.keys[-1] == "runtime/cuda_context"


def test_paged_optimizer_states_are_not_stacked():
    p = plan("llama-2-7b", "t4", TrainSpec(method="qlora", optim="paged_adamw_8bit"), calibrations={})
    assert p.components[OFF_DEVICE[0]] > 0
    (panel,) = panels([p])
    assert OFF_DEVICE[0] not in panel.keys
    assert sum(row[0] for row in panel.segments) == p.device_used_bytes


def test_negative_control_components_that_do_not_add_up_are_refused(plans):
    bad = dataclasses.replace(plans[1], components={**plans[1].components,
                                                    "weights/base": plans[1].components["weights/base"] + 1})
    with pytest.raises(PlotError, match="components sum to"):
        panels([plans[0], bad])


def test_figure_draws_those_segments_and_the_gpu_line(plans):
    import matplotlib.pyplot as plt

    fig = figure(plans)
    try:
        drawn = panels(plans)
        axes = fig.axes
        assert len(axes) == 2
        for ax, panel in zip(axes, drawn):
            heights = [r.get_height() for r in ax.patches]
            expected = [b / GIB for row in panel.segments for b in row]
            assert heights == pytest.approx(expected, rel=1e-12)
            tops = {}
            for r in ax.patches:
                x = round(r.get_x() + r.get_width() / 2)
                tops[x] = max(tops.get(x, 0.0), r.get_y() + r.get_height())
            assert [tops[j] for j in range(len(panel.methods))] == pytest.approx(
                [u / GIB for u in panel.device_used], rel=1e-12)
            (line,) = ax.get_lines()
            assert line.get_ydata()[0] == pytest.approx(panel.gpu_memory_bytes / GIB)
            assert [t.get_text() for t in ax.get_xticklabels()] == [
                f"{m}\n{t:,.0f} tok/s" for m, t in zip(panel.methods, panel.tokens_per_second)]
    finally:
        plt.close(fig)


def test_cli_plot_writes_a_png_and_keeps_stdout_json(tmp_path):
    out = tmp_path / "b.png"
    result = CliRunner().invoke(plan_main, ["--model", "7b", "--gpu", "t4", "--method", "qlora", "--json",
                                            "--plot", str(out)])
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p["method"] for p in json.loads(result.stdout)["plans"]] == ["qlora"]
    assert result.stderr == f"plan: wrote the plot to {out}\n"


def test_cli_plot_format_follows_the_extension(tmp_path):
    out = tmp_path / "b.svg"
    result = CliRunner().invoke(plan_main, ["--method", "lora", "--plot", str(out)])
    assert result.exit_code == 0, result.stderr
    assert b"<svg" in out.read_bytes()[:500]


@pytest.mark.parametrize("name, message", [("missing/b.png", "cannot write the plot to"),
                                           ("b.foo", "cannot write the plot to")])
def test_cli_plot_errors_are_one_line_exit_2(tmp_path, name, message):
    result = CliRunner().invoke(plan_main, ["--method", "lora", "--plot", str(tmp_path / name)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"plan: error: {message}") and result.stderr.count("\n") == 1


def test_cli_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = CliRunner().invoke(plan_main, ["--method", "lora", "--plot", str(tmp_path / "b.png")])
    assert result.exit_code == 2
    assert result.stderr == ("plan: error: --plot needs matplotlib: pip install 'ftmem[plot]' "
                             "(or pip install matplotlib)\n")
    assert not (tmp_path / "b.png").exists()
