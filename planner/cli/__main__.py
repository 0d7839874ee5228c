"""`python -m planner.cli.command`: the `plan` command."""
from .command import main

main()
