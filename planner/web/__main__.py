"""``python -m planner.web``: the same as ``plan-ui``."""
from .cli import main

main(prog_name="plan-ui")
