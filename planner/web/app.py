"""The planner's web page, built with Gradio: ``build()`` returns the gr.Blocks, ``launch()``
serves it. The page's settings live in its URL (read on load, written on every change); the
API endpoint ``/plan`` takes the same query string and returns what ``plan --json`` prints.

Everything the page decides (settings, bounds, the command, the advice) is in the pure-Python
modules beside this one (``form``, ``view``, ``engine``); this file is widgets and events.
Nothing here reaches the network: analytics are off, no share link, and the theme's fonts are
the browser's own (the default theme would fetch web fonts).
"""
from __future__ import annotations

import base64
import html
import io
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402

from . import engine, form, view  # noqa: E402

TITLE = "ftmem plan: will this fine-tune fit?"
INTRO = ("Plan the GPU memory of fine-tuning a decoder LLM with full fine-tuning, LoRA, rsLoRA, QLoRA, "
         "DoRA and QDoRA: a named breakdown per method, what fits, the largest batch and sequence, the "
         "step time, and what to use. The settings are `plan`'s, with its names and defaults; the link "
         "holds them, and the command box gives the same plan on the command line.")

# Writes the settings into the address bar (no reload, no history entry per slider step).
WRITE_URL = """(query) => {
  const url = window.location.pathname + (query ? '?' + query : '');
  window.history.replaceState(null, '', url);
  return [];
}"""
# Reads them on load: the query string without its '?'.
READ_URL = "() => [window.location.search.replace(/^\\?/, '')]"
# Downloads the JSON on the page as plan.json, what `plan --json` prints (with its newline).
DOWNLOAD = """(text) => {
  if (!text) { return []; }
  const blob = new Blob([text + '\\n'], {type: 'application/json'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'plan.json';
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  return [];
}"""
MAX_QUEUE = 256  # requests waiting at once, page and API together
CSS = """
.plan-error { color: #b91c1c; font-family: ui-monospace, monospace; margin: 0; }
#command textarea { font-family: ui-monospace, monospace; }
"""


def theme():
    """Gradio's default theme with the browser's own fonts (the default fetches web fonts)."""
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=sans, font_mono=["ui-monospace", "monospace"])


def _model_choices() -> list[tuple[str, str]]:
    """(label, value) per catalog model; the label adds its short aliases, so that typing an
    alias (8b, t4-sized names) completes to the model."""
    aliases: dict[str, list[str]] = {}
    for key, name in engine.catalog_model_keys().items():
        if key != name and "/" not in key:
            aliases.setdefault(name, []).append(key)
    return [(f"{n} ({', '.join(aliases[n])})" if aliases.get(n) else n, n) for n in engine.model_choices()]


def respond(settings: dict) -> dict:
    """Everything the page and the API show for some settings; a bad setting gives ``error``,
    plan's one line, and empty answers. Never raises for bad input."""
    out = {"error": "", "json": "", "markdown": "", "table": "", "plans": [], "command": "",
           "query": form.to_query(settings)}
    try:
        out["command"] = form.command(settings)
        outcome = form.plan(settings)
    except form.PageError as exc:
        out["error"] = exc.line
        return out
    out.update(json=outcome.json(), markdown=view.markdown(outcome), plans=outcome.plans,
               table="\n\n".join(g.table for g in outcome.groups))
    return out


def plan_api(query: str) -> dict:
    """Plan the settings of a query string, as the page's link holds them
    (``model=7b&gpu=t4&batch-size=4&method=qlora``; the keys are plan's flags without their
    dashes). Returns {"json": what `plan --json` prints for the same settings, "error": the one
    line `plan` prints for bad input ("" if none), "command": the `plan` command, "query": the
    settings as the page's link writes them}."""
    try:
        settings = form.from_query(query)
    except form.PageError as exc:
        return {"json": "", "error": exc.line, "command": "", "query": ""}
    out = respond(settings)
    return {k: out[k] for k in ("json", "error", "command", "query")}


def _figure(plans):
    """``plan --plot``'s figure as the page's plot, a PNG drawn as ``plan --plot`` saves it
    (its legend sits right of the bars, which Gradio's own encoding would crop)."""
    if not plans:
        return None
    try:
        fig = engine.figure(plans)
    except Exception as exc:  # matplotlib missing: the page still answers, without the chart
        gr.Warning(str(exc))
        return None
    import matplotlib.pyplot as plt

    try:
        with io.BytesIO() as buf:
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            png = base64.b64encode(buf.getvalue()).decode("ascii")
    finally:
        plt.close(fig)
    return PlotData(type="matplotlib", plot=f"data:image/png;base64,{png}")


def _error_html(line: str) -> str:
    """The one line, as text (not Markdown: a line may hold backticks or underscores)."""
    return f'<p class="plan-error">{html.escape(line)}</p>' if line else ""


def build() -> gr.Blocks:
    """The page: settings on the left, the answer on the right."""
    d = form.defaults()
    opts = engine.command_options()

    def choices(name):
        return list(form.BY_NAME[name].choices)

    def named(name, info=None):
        """A widget's label (plan's flag), its help (plan's) and its id (the setting's name)."""
        return {"label": f"--{form.BY_NAME[name].key}", "info": info or opts[name].help, "elem_id": name}

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                w = {}
                w["models"] = gr.Dropdown(_model_choices(), value=d["models"], allow_custom_value=True,
                                          label="Model (--model)", elem_id="model",
                                          info="A catalog name or alias: type to complete. "
                                               "Or paste a config.json below.")
                w["config"] = gr.Textbox("", lines=3, max_lines=10, label="...or paste a config.json",
                                         elem_id="config", max_length=form.MAX_CONFIG_BYTES,
                                         placeholder='{"model_type": "llama", "hidden_size": 4096, ...}',
                                         info=f"Its text, at most {form.MAX_CONFIG_BYTES // 1024} KiB; it replaces "
                                              "the model above. The page reads no files.")
                w["gpus"] = gr.Dropdown(engine.gpu_choices(), value=list(d["gpus"]), multiselect=True,
                                        max_choices=form.MAX_GPUS, label="GPU (--gpu)", elem_id="gpu",
                                        info=f"Up to {form.MAX_GPUS}; memory as the driver reports it.")
                w["methods"] = gr.CheckboxGroup(choices("methods"), value=list(d["methods"]),
                                                label="Methods (--method)", elem_id="methods")
                w["batch_size"] = gr.Slider(1, form.LIMITS["batch_size"], value=d["batch_size"], step=1,
                                            precision=0, label="Batch size per GPU (--batch-size)",
                                            elem_id="batch_size")
                w["seq_len"] = gr.Slider(1, form.LIMITS["seq_len"], value=d["seq_len"], step=1, precision=0,
                                         label="Sequence length (--seq-len)", elem_id="seq_len")
                w["rank"] = gr.Slider(1, form.LIMITS["rank"], value=d["rank"], step=1, precision=0,
                                      label="LoRA rank (--rank)", elem_id="rank")
                name = "gradient_checkpointing"
                w[name] = gr.Checkbox(d[name], **named(name))
                with gr.Accordion("Training settings", open=False):
                    w["alpha"] = gr.Number(d["alpha"], **named("alpha", "Empty: 2*rank."))
                    for name in ("target_modules", "target_parameters"):
                        w[name] = gr.Textbox(d[name], max_length=form.MAX_TEXT, **named(name))
                    w["lora_dropout"] = gr.Number(d["lora_dropout"], **named("lora_dropout"))
                    w["modules_to_save"] = gr.Textbox(d["modules_to_save"], max_length=form.MAX_TEXT,
                                                      **named("modules_to_save"))
                    for name in ("dtype", "precision", "optim", "quant_type", "attn_implementation", "kernels"):
                        w[name] = gr.Dropdown(choices(name), value=d[name], **named(name))
                    w["double_quant"] = gr.Checkbox(d["double_quant"], **named("double_quant"))
                with gr.Accordion("Several GPUs", open=False):
                    w["num_gpus"] = gr.Number(d["num_gpus"], precision=0, **named("num_gpus"))
                    for name in ("sharding", "offload"):
                        w[name] = gr.Dropdown(choices(name), value=d[name], **named(name))
                with gr.Accordion("Searches, run length, calibration", open=False):
                    for name in ("search_batch", "search_seq"):
                        w[name] = gr.Checkbox(d[name], **named(name))
                    for name in ("dataset_tokens", "epochs", "mean_len"):
                        w[name] = gr.Number(d[name], precision=0, **named(name))
                    w["packing"] = gr.Checkbox(d["packing"], **named("packing"))
                    w["host"] = gr.Dropdown(choices("host"), value=d["host"], **named("host"))
                    w["calibrated"] = gr.Checkbox(d["calibrated"], **named("calibrated"))
            with gr.Column(scale=3, min_width=480):
                error = gr.HTML("", elem_id="error")
                plot = gr.Plot(label="Memory at the peak, per method (GiB)", show_label=False, elem_id="plot")
                summary = gr.Markdown("", elem_id="summary")
                command = gr.Textbox("", label="The same plan on the command line", elem_id="command",
                                     interactive=False, buttons=["copy"])
                download = gr.Button("Download the JSON (what plan --json prints)", elem_id="download")
                with gr.Accordion("JSON (plan --json)", open=False):
                    json_box = gr.Code("", language="json", elem_id="json")
                with gr.Accordion("Table (plan)", open=False):
                    table_box = gr.Code("", elem_id="table")
                query = gr.Textbox("", visible=False)

        names = list(w)
        inputs = [w[n] for n in names]
        outputs = [error, plot, summary, command, json_box, table_box, query]

        def show(out: dict) -> list:
            return [_error_html(out["error"]), _figure(out["plans"]), out["markdown"], out["command"], out["json"],
                    out["table"], out["query"]]

        def update(*values):
            try:
                settings = form.from_values(dict(zip(names, values)))
            except form.PageError as exc:
                return [_error_html(exc.line), None, "", "", "", "", gr.skip()]
            return show(respond(settings))

        def load(query_string):
            """The settings of the page's link, into the widgets. A link that does not plan (a
            bad value, or one the sliders cannot hold) keeps the defaults and says why."""
            try:
                settings = form.from_query(query_string or "")
                out = respond(settings)
            except form.PageError as exc:
                out = {"error": exc.line}
            if out["error"]:
                line = out["error"]
                out = respond(form.defaults())
                out["error"] = f"{line} (the link's settings are ignored)"
                return [gr.skip()] * len(inputs) + show(out)
            return [list(settings[n]) if isinstance(settings[n], tuple) else settings[n] for n in names] + show(out)

        link = gr.Textbox("", visible=False)
        demo.load(load, [link], inputs + outputs, js=READ_URL, api_visibility="private",
                  concurrency_id="plan", show_progress="hidden")
        # a slider, box or list answers as the user moves it (input: not when the link sets it
        # on load); a text box on any change of its text (its input event misses a paste)
        triggers = [c.change if isinstance(c, gr.Textbox) else c.input for c in inputs]
        gr.on(triggers, update, inputs, outputs, trigger_mode="always_last",
              api_visibility="private", concurrency_id="plan", show_progress="hidden"
              ).then(None, [query], None, js=WRITE_URL, api_visibility="private", queue=False, show_progress="hidden")
        download.click(None, [json_box], None, js=DOWNLOAD, api_visibility="private", queue=False,
                       show_progress="hidden")
        gr.api(plan_api, api_name="plan", concurrency_id="api", concurrency_limit=4)
    # a bounded queue: past it a request is refused at once rather than kept waiting
    return demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)


def launch(demo: gr.Blocks | None = None, host: str = "127.0.0.1", port: int | None = None,
           block: bool = True, quiet: bool = True):
    """Serve the page on ``host``:``port`` (no share link, no analytics); returns the local URL."""
    demo = demo or build()
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, quiet=quiet,
                            prevent_thread_lock=True, theme=theme(), css=CSS, ssr_mode=False,
                            footer_links=["api"])
    if block:
        print(f"plan-ui: serving the planner at {url} (Ctrl+C to stop)", flush=True)
        demo.block_thread()
    return url
