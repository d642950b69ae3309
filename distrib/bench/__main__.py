"""``python -m distrib.bench [checkpoint|data|memory|scale|scaling] [options]``: run one benchmark
(default: all, each with its short default; ``make bench``)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from distrib.bench import checkpoint, data, memory, scale, scaling

BENCHMARKS: dict[str, Callable[[list[str]], int | None]] = {
    "checkpoint": checkpoint.main,
    "data": data.main,
    "memory": memory.main,
    "scale": scale.main,
    "scaling": scaling.main,
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] in BENCHMARKS:
        return BENCHMARKS[argv[0]](argv[1:]) or 0
    if argv:
        print(
            f"distrib.bench: unknown benchmark {argv[0]!r}; expected {' or '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    return max([run([]) or 0 for run in BENCHMARKS.values()])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
