"""`python -m planner.cli`: the `plan` command."""
from .command import main

main()
