"""``python -m distrib env|export ...``: the tools around training (the trainer itself is
``python -m distrib.train``, the launcher ``python -m distrib.launch``)."""

from __future__ import annotations

import sys

USAGE = """usage: python -m distrib COMMAND [options]

commands:
  env      which Python, torch, CUDA, backends, launch environment; --check N times all_reduce
  export   a checkpoint's model as TorchScript or torch.export, loadable with torch alone

training: python -m distrib.train ...   launching a script: python -m distrib.launch ..."""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "env":
        from distrib.doctor import main as run
    elif command == "export":
        from distrib.export import main as run
    else:
        print(f"distrib: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
