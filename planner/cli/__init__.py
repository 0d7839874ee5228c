"""The `plan` command: options, rendering, plots, exit codes."""
from .command import main

__all__ = ["main"]
