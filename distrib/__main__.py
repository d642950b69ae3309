"""``python -m distrib env|export|convert|plot|sweep ...``: the tools around training (the trainer
itself is ``python -m distrib.train``, the launcher ``python -m distrib.launch``).

Each command owns its options and is imported only once picked, so one command never pays for
the other's imports (torch itself comes with ``import distrib``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "env": ("distrib.cli.env", "Python, torch, CUDA, backends, launch environment; --check N"),
    "export": ("distrib.cli.export", "a checkpoint's model as TorchScript or torch.export"),
    "convert": ("distrib.cli.convert", "a checkpoint (either kind) as one plain weights file"),
    "plot": ("distrib.cli.plot", "a run's (or a sweep's) training curves as a PNG"),
    "sweep": ("distrib.cli.sweep", "a sweep directory's table again: overrides -> final metrics"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distrib",
        description="Tools around training.",
        epilog="training: python -m distrib.train ...   a script: python -m distrib.launch ...",
        exit_on_error=False,  # an unknown command is our one line, not usage and a line
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        command = parser.parse_args(argv[:1]).command  # the command's own parser reads the rest
    except argparse.ArgumentError as e:
        print(f"distrib: error: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
