"""``python -m distrib export CHECKPOINT|RUN_DIR --format torchscript|exported``: ship the model.

The checkpoint holds the run's whole config, so the model is rebuilt from its ``model``
``_target_`` node and its weights loaded (``weights_only=True``); the artifact needs only torch
to load (``torch.jit.load`` or ``torch.export.load(...).module()``), not distrib and not the
training code. A JSON file beside it records the input shape and dtype, the format, the torch
version and the checkpoint's sha256, so a deployed model names the exact weights it came from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = {"torchscript": ".ts.pt", "exported": ".pt2"}


class ExportError(Exception):
    """A bad path or checkpoint (exit 2) or a model torch cannot export (exit 1)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def resolve(path: Path, which: str = "best") -> tuple[Path, str]:
    """A checkpoint (a file, or a sharded one's directory), or one of a run directory's: its
    best by the run's ``trainer.checkpoint.best_metric`` when one was recorded (``which=best``,
    the default: what a user ships), else -- or with ``which=latest`` -- the newest good one (what
    a resume loads). Returns the path and why it was picked, for the output line."""
    if path.is_file() or (path.suffix == ".dcp" and path.is_dir()):
        return path, "as given"
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint file or run directory", 2)
    from distrib.checkpoint import Checkpointer

    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    ckpt = Checkpointer(directory, enabled=False)
    found = ckpt.latest_good()
    if found is None:
        raise ExportError(f"{path}: no good checkpoint in {directory}", 2)
    if which == "best":
        best = _best(directory, found[0].get("config") or {})
        if best is not None:
            return best
    return found[1], "the newest good checkpoint"


def _best(directory: Path, config: dict[str, Any]) -> tuple[Path, str] | None:
    """The manifest's best good checkpoint by the run's best_metric/best_mode, if any."""
    from distrib.checkpoint.checkpointer import load_any
    from distrib.checkpoint.files import CheckpointError, read_manifest

    policy = (config.get("trainer") or {}).get("checkpoint") or {}
    metric, mode = policy.get("best_metric"), policy.get("best_mode", "max")
    if not metric:
        return None
    entries = read_manifest(directory)
    scored = [
        (e["metrics"][metric], n)
        for n, e in entries.items()
        if not e.get("bad") and (e.get("metrics") or {}).get(metric) is not None
    ]
    for value, name in sorted(scored, reverse=mode == "max"):
        try:
            load_any(directory / name, entries[name])  # verified, as a resume would
        except CheckpointError:
            continue
        return directory / name, f"the best by {metric} ({mode}): {value:g}"
    return None


def weights(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unwrapped model's state dict of checkpoint ``path`` (either kind, verified against
    its manifest), and the run's config."""
    from distrib.checkpoint import sharded
    from distrib.checkpoint.checkpointer import load_any
    from distrib.checkpoint.files import CheckpointError, read_manifest

    try:
        state = load_any(path, read_manifest(path.parent).get(path.name))
        model = sharded.full_model_state(path) if path.suffix == ".dcp" else state.get("model")
    except CheckpointError as e:
        raise ExportError(str(e), 2) from None
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in config or model is None:
        raise ExportError(f"{path}: not a distrib checkpoint (no model config and weights)", 2)
    return model, config


def load(path: Path) -> tuple[Any, dict[str, Any]]:
    """The model of checkpoint ``path``, rebuilt and with its weights, and the run's config."""
    state, config = weights(path)
    from distrib.errors import ConfigError
    from distrib.trainer.guards import BuildFailed, build_named

    try:
        model = build_named("model", config["model"])
        if not isinstance(model, torch_module()):
            raise ExportError(
                f"{path}: model._target_={config['model'].get('_target_')} built a "
                f"{type(model).__name__}, not an nn.Module: nothing to export",
                2,
            )
        model.load_state_dict(state)
    except ConfigError as e:  # a denied target in the checkpoint's config: never built
        raise ExportError(f"{path}: {e}", 2) from None
    except (BuildFailed, RuntimeError) as e:  # code moved on since, or weights of another shape
        said = " ".join(str(e).split())[:300]  # load_state_dict names the keys on line two
        raise ExportError(f"{path}: its model does not rebuild here: {said}", 2) from None
    return model.eval(), config


def torch_module() -> type:
    from torch import nn

    return nn.Module


def example_input(config: dict[str, Any], shape: tuple[int, ...] | None) -> Any:
    """``shape`` of zeros, or one sample of the run's evaluation set with a batch dim of 1."""
    import torch

    if shape is not None:
        return torch.zeros(shape)
    from distrib.trainer.guards import BuildFailed, build_named

    hint = "give --example-input-shape, e.g. 1,1,8,8"
    node = (config.get("data") or {}).get("eval")
    if not isinstance(node, dict):
        raise ExportError(
            f"the checkpoint's config has no data.eval to take a sample of: {hint}", 2
        )
    from distrib.errors import ConfigError

    try:  # the data may live where the run did, not here
        sample = build_named("data.eval", node)[0]
    except ConfigError as e:
        raise ExportError(str(e), 2) from None
    except (BuildFailed, IndexError) as e:
        said = " ".join(str(e).split())[:300]
        raise ExportError(f"no sample of the eval set ({said}): {hint}", 2) from None
    x = sample[0] if isinstance(sample, list | tuple) else sample
    if not isinstance(x, torch.Tensor):
        raise ExportError(f"the eval set's samples are not tensors: {hint}", 2)
    return x.unsqueeze(0)


def export(model: Any, example: Any, fmt: str, out: Path) -> None:
    """Write the artifact to ``out`` atomically (a temporary name, then a rename)."""
    import torch

    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with _quiet_unless_ok():
            if fmt == "torchscript":
                with torch.no_grad():
                    torch.jit.save(torch.jit.trace(model, example), str(tmp))
            else:
                torch.export.save(_export_any_batch(model, example), str(tmp))
    except Exception as e:
        tmp.unlink(missing_ok=True)
        other = "exported" if fmt == "torchscript" else "torchscript"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{fmt} export failed: {first}; try --format {other}", 1) from None
    os.replace(tmp, out)


def _export_any_batch(model: Any, example: Any) -> Any:
    """``torch.export`` with the batch dimension dynamic: the program takes any batch size,
    not only the example's (torch specialises a size of 1, so the example is traced at 2)."""
    import torch

    if example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


@contextlib.contextmanager
def _quiet_unless_ok() -> Iterator[None]:
    """A failing torch.export logs the error at length and prints the partial graph to stderr
    before raising; our one line says what failed, so that is dropped. On success what torch
    wrote (a TracerWarning that the trace may not hold for other inputs) is passed on."""
    logger = logging.getLogger("torch")  # its handler holds the real stderr: quiet it by level
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            yield
        sys.stderr.write(said.getvalue())
    finally:
        logger.setLevel(level)


def _sha256(path: Path) -> str:
    """A file's sha256; a sharded checkpoint's: of its files' names and sha256s, in order."""
    from distrib.checkpoint.files import sha256_of

    if path.is_file():
        return sha256_of(path)
    listing = "".join(f"{p.name} {sha256_of(p)}\n" for p in sorted(path.iterdir()) if p.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()


def _shape(text: str | None) -> tuple[int, ...] | None:
    """``1,1,8,8`` -> (1, 1, 8, 8); anything else is the option's one-line error."""
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ExportError(f"--example-input-shape {text}: expected sizes >= 1, e.g. 1,1,8,8", 2)
    return shape


def _write_meta(out: Path, fmt: str, example: Any, checkpoint: Path) -> Path:
    """``<artifact>.json``: what a deployment needs to feed the model and name its weights."""
    import torch

    from distrib.checkpoint.files import write_text_atomic

    meta = {
        "format": fmt,
        "input_shape": list(example.shape),
        "input_dtype": str(example.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": _sha256(checkpoint),
    }
    path = Path(f"{out}.json")
    write_text_atomic(path, json.dumps(meta, indent=2) + "\n")
    return path


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m distrib export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint file or a run directory")
    p.add_argument("--format", choices=sorted(FORMATS), default="torchscript")
    p.add_argument("--example-input-shape", help="e.g. 1,1,8,8 (default: one eval sample)")
    p.add_argument("--out", type=Path, help="default: next to the checkpoint")
    p.add_argument(
        "--which", choices=("best", "latest"), default="best",
        help="of a run directory: the best checkpoint by its best_metric (default, when one "
        "was recorded) or the newest good one",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        shape = _shape(args.example_input_shape)
        path, why = resolve(args.checkpoint, args.which)
        model, config = load(path)
        example = example_input(config, shape)
        out = args.out or path.with_name(path.stem + FORMATS[args.format])
        if not out.parent.is_dir():
            raise ExportError(f"--out {out}: no such directory {out.parent}", 2)
        export(model, example, args.format, out)
    except ExportError as e:
        print(f"distrib: error: {e}", file=sys.stderr)
        return e.code
    meta = _write_meta(out, args.format, example, path)
    print(f"distrib: wrote {out} ({args.format}) and {meta}, from {path.name} ({why})")
    return 0
