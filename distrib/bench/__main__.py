"""``python -m distrib.bench [checkpoint] [options]``: run one benchmark (default: all)."""

from __future__ import annotations

import sys

from distrib.bench import checkpoint

BENCHMARKS = {"checkpoint": checkpoint.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] in BENCHMARKS:
        BENCHMARKS[argv[0]](argv[1:])
        return 0
    if argv:
        print(
            f"distrib.bench: unknown benchmark {argv[0]!r}; expected {' or '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    for run in BENCHMARKS.values():
        run([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
