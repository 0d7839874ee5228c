"""The planner's web page as a Hugging Face Space (or `python app.py` locally).

A Space runs this file; Gradio then binds the address the Space sets (GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT). Locally, `plan-ui` does the same with --host/--port.
"""
import os

from planner.web.app import build, launch

demo = build()

if __name__ == "__main__":
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None)
