"""``plan-ui``: serve the planner's web page."""
from __future__ import annotations

import click

from planner.cli.exits import ERROR, fail


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The default serves this machine only; 0.0.0.0 serves the network "
                   "(the page has no login).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (Gradio's usual port); 0: the first free one from 7860.")
def main(host: str, port: int) -> None:
    """Serve the planner as a web page and print its URL: the settings of `plan` as sliders and
    boxes, the breakdown of each method as a chart, what fits, the largest batch and sequence,
    the step time and the advice. The link holds the settings; the page shows the `plan`
    command for them and gives the JSON `plan --json` prints. Needs the ui extra:
    pip install 'ftmem[ui]'.

    A command of its own rather than `plan serve`: `plan` plans once from its options and
    exits, and every option of it is a setting of a plan; serving a page is a different job,
    with options of its own (--host, --port), and `plan-ui` leaves `plan` as it is.

    \b
    Examples:
      plan-ui                      # http://127.0.0.1:7860/
      plan-ui --port 8080
      plan-ui --host 0.0.0.0       # reachable from other machines
    """
    try:
        from .app import launch
    except ImportError as exc:
        fail(f"the web page needs the ui extra: pip install 'ftmem[ui]' ({exc})", prog="plan-ui")
    try:
        launch(host=host, port=port or None)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        fail(f"cannot serve on {host}:{port}: {exc}", code=ERROR, prog="plan-ui")


if __name__ == "__main__":  # pragma: no cover
    main()
