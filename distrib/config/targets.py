"""What a ``_target_`` may point at, checked in the parent before anything is built.

Every ``_target_`` node is checked against its callable's signature (a misspelt argument or a
value of the wrong type is one line here, not a traceback from every worker) and against its
*kind*: ``model`` must build an ``nn.Module``, ``data.*`` a Dataset, ``optim`` an optimizer,
``scheduler`` an LR scheduler -- so ``model._target_=os.system`` never reaches a worker.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any

from distrib.errors import ConfigError, check


def check_targets(cfg: Any) -> None:
    """Check every ``_target_`` node against its callable's signature without building it.

    A misspelt argument or a value of the wrong type (``optim.lr=abc``) is reported here, in
    the parent process, instead of as a traceback from every worker.
    """
    for key in ("model", "data", "optim", "scheduler", "task"):
        refuse_denied(getattr(cfg, key), key)
    _check_target(cfg.model, "model", kind="model")
    check(
        isinstance(cfg.data, dict) and {"train", "eval"} <= set(cfg.data),
        "data",
        cfg.data,
        "a node with 'train' and 'eval' dataset _target_ entries",
    )
    _check_target(cfg.data["train"], "data.train", kind="data")
    _check_target(cfg.data["eval"], "data.eval", kind="data")
    _preflight(cfg.data["train"], "data.train")
    _preflight(cfg.data["eval"], "data.eval")
    _check_target(cfg.optim, "optim", skip=1, kind="optim")
    if cfg.scheduler is not None:
        _check_target(cfg.scheduler, "scheduler", skip=1, kind="scheduler")
    _check_target(cfg.task, "task", kind="task")
    _probe_optimizer(cfg.optim)


def _import(target: str) -> Any:
    """Import ``pkg.module.attr`` (quietly: hydra's own locator logs every failure)."""
    parts = target.split(".")
    missing: ImportError = ImportError(target)
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(prefix)
        except ImportError as e:
            if getattr(e, "name", None) not in (prefix, None):
                raise  # the module exists but fails to import, or its package is missing
            missing = e  # the top-level package, in the end
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise missing


_KINDS = {
    "model": ("torch.nn", "Module", "an nn.Module subclass"),
    "data": ("torch.utils.data", "Dataset", "a Dataset class or a function that returns one"),
    "optim": ("torch.optim", "Optimizer", "a torch.optim.Optimizer subclass"),
    "scheduler": ("torch.optim.lr_scheduler", "LRScheduler", "an LR scheduler class"),
    "task": ("distrib.tasks", "Task", "a task class (distrib.tasks.Task) or a function"),
}
# Modules whose callables are never a model, a dataset or an optimizer.
_NEVER = ("os", "posix", "subprocess", "shutil", "sys", "builtins", "pty", "socket", "runpy")

# What a ``_target_`` may never name, whatever key it is under: what runs code, starts a
# process, or unpickles (which runs code). A config may come from a checkpoint (export,
# convert) or a stranger's command line; building it must not be a way to run a payload.
DENIED_MODULES = (
    *_NEVER, "nt", "pickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
    "importlib", "ctypes", "code", "codeop", "pdb", "multiprocessing", "webbrowser", "joblib",
    "torch.hub", "torch.package", "torch.jit", "torch.serialization",
    "torch.utils.cpp_extension",
)  # fmt: skip
DENIED_NAMES = ("torch.load", "torch.save", "numpy.load", "numpy.save", "pandas.read_pickle")


def _denied(target: str, obj: Any = None) -> bool:
    names = [target, getattr(obj, "__module__", None) or ""]
    if target in DENIED_NAMES:
        return True
    return any(n == m or n.startswith(m + ".") for n in names if n for m in DENIED_MODULES)


def refuse_denied(node: Any, key: str) -> None:
    """Raise a one-line `ConfigError` for the first ``_target_`` in ``node`` (nested ones
    too) that `DENIED_MODULES` or `DENIED_NAMES` covers; import nothing it names."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and _denied(str(target)):
            raise ConfigError(
                f"{key}._target_",
                message=f"{key}._target_={target}: refused: it loads or runs code (a "
                "_target_ names a model, dataset, task, optimizer or scheduler)",
            )
        for k, v in node.items():
            if k != "_target_":
                refuse_denied(v, f"{key}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            refuse_denied(v, f"{key}.{i}")


def _check_kind(obj: Any, key: str, kind: str, target: str) -> None:
    """``obj`` builds the kind of thing ``key`` needs: a subclass of it, or a function whose
    return annotation says so (data factories may leave it out, but no builtin or ``os``-like
    function passes)."""
    module, name, wanted = _KINDS[kind]
    if kind == "task":  # a Protocol: a class with metrics(), or a function that makes one
        ok = (isinstance(obj, type) and callable(getattr(obj, "metrics", None))) or (
            inspect.isfunction(obj) and not _denied(obj.__module__ or "")
        )
        if not ok:
            raise ConfigError(f"{key}._target_", target, wanted)
        return
    base = getattr(importlib.import_module(module), name)
    if kind == "scheduler" and not isinstance(base, type):  # pragma: no cover - old torch
        return
    if isinstance(obj, type):
        ok = issubclass(obj, base) or (kind == "scheduler" and obj.__name__ == "ReduceLROnPlateau")
    elif inspect.isfunction(obj) and obj.__module__.split(".")[0] not in _NEVER:
        try:
            returned = typing.get_type_hints(obj).get("return")
        except Exception:  # unresolvable annotations: judge by the rest
            returned = None
        if isinstance(returned, type):
            ok = issubclass(returned, base)
        else:
            ok = kind == "data" and returned is None
    else:  # builtins (os.system), methods, modules, instances
        ok = False
    if not ok:
        raise ConfigError(f"{key}._target_", target, wanted + (
            " (or a function annotated to return one)" if kind != "data" else ""
        ))  # fmt: skip


def _check_target(node: Any, key: str, skip: int = 0, kind: str | None = None) -> None:
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(
            key, node, "a node with a _target_ (a dotted path to a class or function)"
        )
    target = node["_target_"]
    try:
        obj = _import(str(target))
    except Exception as e:
        message = import_failure(f"{key}._target_", target, e)
        raise ConfigError(f"{key}._target_", message=message) from None
    if kind is not None:
        _check_kind(obj, key, kind, str(target))
    try:
        sig = inspect.signature(obj, eval_str=True)
    except (TypeError, ValueError, NameError):
        return  # builtins and C extensions: nothing to check before calling
    params = list(sig.parameters.values())[skip:]
    by_name = {p.name: p for p in params}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    for name, value in node.items():
        if name.startswith("_"):
            continue
        param = by_name.get(name)
        if param is None:
            if takes_kwargs:
                continue
            takes = f"an argument of {target}: {names(params) or '(none)'}"
            raise ConfigError(f"{key}.{name}", value, takes + _why_unknown(key, name, params))
        expected = _accepted_types(param.annotation)
        int_for_float = float in expected and isinstance(value, int) and not isinstance(value, bool)
        if expected and value is not None and not isinstance(value, expected) and not int_for_float:
            allowed = " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{key}.{name}", value, f"{allowed} ({target})")


def _preflight(node: dict, key: str) -> None:
    """A data target's own ``preflight(**args)`` (distrib's shard readers have one: files
    exist, sizes and headers fit), run here so a missing, truncated or empty shard list is one
    line before any worker starts. Its error names the argument or the file; this adds the key.
    """
    hook = getattr(_import(str(node["_target_"])), "preflight", None)
    if not callable(hook):
        return
    try:
        hook(**{k: v for k, v in node.items() if not str(k).startswith("_")})
    except ConfigError as e:
        said = str(e)
        joined = f"{key}.{said}" if said.startswith(f"{e.key}=") else f"{key}: {said}"
        raise ConfigError(f"{key}.{e.key}", message=joined) from None


def _why_unknown(key: str, name: str, params: list[inspect.Parameter]) -> str:
    """The likely cause of an argument the target does not take, as a hint in parentheses."""
    import difflib

    if name == key.rpartition(".")[2]:  # task.task: a group file's content nested under it
        return f" (a {key}/*.yaml whose first line is not '# @package _global_'?)"
    usable = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    near = difflib.get_close_matches(name, usable, n=1)
    if near:
        return f" (did you mean {key}.{near[0]}?)"
    return f" (a key the new target does not take? drop it: ~{key}.{name})"


def names(params: list[inspect.Parameter]) -> str:
    return ", ".join(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def import_failure(key: str, target: object, error: BaseException) -> str:
    """Why ``target`` did not import, and the usual fix: its package is not on the path."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, AttributeError):  # the module imports; the name is not in it
        said = _missing_name(key, str(target))
        if said:
            return said
    why = f"{type(cause).__name__}: {cause}" if str(cause) != str(target) else "not found"
    return (
        f"{key}={target}: cannot import it ({why}); run from the directory that holds its "
        "package, add that directory to PYTHONPATH, or pip install -e your project"
    )


def _missing_name(key: str, target: str) -> str | None:
    """``distrib.models.ResNet9000``: the module is there, so the path is not the problem;
    name what the module does define, the nearest first."""
    import difflib

    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    defined = sorted(
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module_name
    )
    near = difflib.get_close_matches(name, defined, n=1, cutoff=0.5)
    hint = f"; did you mean {module_name}.{near[0]}?" if near else ""
    return f"{key}={target}: {module_name} has no {name}{hint} (it defines: {', '.join(defined)})"


def unknown_argument(key: str, node: dict, name: str) -> str | None:
    """For ``optim.lrr=0.1``: the node's target does not take ``lrr`` -- say what it takes and
    the nearest name, instead of suggesting ``+optim.lrr`` (which would fail next). None when
    the target does take it (then ``+key`` is the right advice) or cannot be inspected."""
    import difflib

    try:
        obj = _import(str(node["_target_"]))
        params = list(inspect.signature(obj).parameters.values())
    except Exception:
        return None
    if node.get("_partial_"):  # optimizers, schedulers: the first argument comes at build time
        params = params[1:]
    if name in {p.name for p in params} or any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    usable = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    near = difflib.get_close_matches(name, usable, n=1)
    hint = f"did you mean {key}.{near[0]}? " if near else ""
    return (
        f"{key}.{name}: not an argument of {node['_target_']}; {hint}it takes: {', '.join(usable)}"
    )


def _accepted_types(annotation: Any) -> tuple[type, ...]:
    """Plain types an annotation admits; empty (= do not check) for anything fancier."""
    simple = (bool, int, float, str)
    if annotation in simple:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        import torch  # an lr may be a float or a Tensor: both accept a float value

        if members and all(a in simple or a is torch.Tensor for a in members):
            return tuple(a for a in members if a in simple)
    return ()


def _probe_optimizer(node: dict) -> None:
    """Build the optimizer over one dummy parameter: its own range checks (lr < 0) run now."""
    import torch

    try:
        factory = build(node)
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError("optim", message=f"optim ({node['_target_']}): {e}") from None


def build(node: Any, *args: Any, key: str = "config") -> Any:
    """``hydra.utils.instantiate`` on a plain dict or DictConfig node, extra positional args;
    never a denied target (`refuse_denied`: every path that builds, a checkpoint's config
    included, goes through here)."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    refuse_denied(plain, key)
    return instantiate(node, *args, _convert_="all")
