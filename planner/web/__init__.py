"""The planner as a web page: sliders for the settings, the breakdown as a chart, the link and
the `plan` command for what is on screen (``plan-ui``, or ``app.py`` as a Hugging Face Space).

Needs the ``ui`` extra (``pip install -e '.[ui]'``: Gradio and matplotlib); ``plan`` does not.

- ``engine``: the one module that imports the planner (its public entry points).
- ``form``: the settings, their bounds, the link's query string and the ``plan`` command.
- ``view``: the answer as Markdown.
- ``app``: the Gradio page and its API (``/plan``); ``cli``: the ``plan-ui`` command.
"""
