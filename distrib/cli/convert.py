"""``python -m distrib convert CHECKPOINT|RUN_DIR --out FILE``: one file of plain weights.

A checkpoint of either kind (a ``.pt`` or a sharded ``.dcp`` directory, verified against its
manifest) becomes a single file that ``torch.load(FILE, weights_only=True)`` opens anywhere,
without distrib: the unwrapped model's ``state_dict()``, under its own keys (no ``module.``,
``_orig_mod.`` or FSDP prefixes), written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from distrib.checkpoint.files import save_atomic
    from distrib.cli.export import ExportError, resolve, weights

    p = argparse.ArgumentParser(
        prog="python -m distrib convert", description=__doc__.split("\n")[0]
    )
    p.add_argument("checkpoint", type=Path, help="a checkpoint (file or .dcp) or a run directory")
    p.add_argument("--out", type=Path, required=True, help="the file to write")
    p.add_argument(
        "--which", choices=("best", "latest"), default="best",
        help="of a run directory: its best checkpoint (default) or the newest",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        path, why = resolve(args.checkpoint, args.which)
        state, _ = weights(path)
        if not args.out.parent.is_dir():
            raise ExportError(f"--out {args.out}: no such directory {args.out.parent}", 2)
    except ExportError as e:
        print(f"distrib: error: {e}", file=sys.stderr)
        return e.code
    save_atomic(dict(state), args.out)
    print(f"distrib: wrote {args.out} ({len(state)} tensors of {path}: {why})")
    return 0
