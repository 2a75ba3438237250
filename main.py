"""Command line: python main.py --mode MODE --config NAME_OR_PATH [--config.a.b=value ...] (the `scoresde` command)."""
from scoresde.commands.cli import MODES, entry, run, usage

__all__ = ["MODES", "entry", "run", "usage"]

if __name__ == "__main__":
    entry()
