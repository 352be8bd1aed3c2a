"""The `lmscale` command line: `main` dispatches to one thin module per verb in `cli.commands`."""
from lmscale.cli.main import main

__all__ = ["main"]
