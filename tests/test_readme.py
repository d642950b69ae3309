"""The guide's "Your own model, data and task" section (``docs/guide/own-model.md``, once the
README's), followed literally as a new user would.

Its code blocks are written into an empty project directory, at the paths their first comment
names, and its commands are run there. A second test pins every block to the file of the same
path under ``examples/own_model/``, so the example and the docs cannot drift apart.
"""

from __future__ import annotations

import re
import time
from itertools import takewhile
from pathlib import Path

import pytest
from helpers import ROOT, run_cli
from omegaconf import OmegaConf

PAGE = ROOT / "docs" / "guide" / "own-model.md"
HEADING = "# Your own model, data and task"
EXAMPLE = ROOT / "examples" / "own_model"
# "# mypkg/nets.py" or "# conf/task/x.yaml (...)": a relative path first on a comment line
PATH_COMMENT = re.compile(r"#\s*([\w.-]+(?:/[\w.-]+)*\.(?:py|yaml))(?:\s|$)")


def section() -> str:
    """The section's text: from the page's title to its first ``##``/``###`` heading outside
    code (the page's later sections are not part of the example)."""
    lines = PAGE.read_text().splitlines(keepends=True)
    start = lines.index(HEADING + "\n") + 1
    in_code = False
    for end in range(start, len(lines)):
        if lines[end].startswith("```"):
            in_code = not in_code
        elif not in_code and lines[end].startswith(("## ", "### ")):
            return "".join(lines[start:end])
    return "".join(lines[start:])


def blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of each fenced block of the section, in order."""
    found = re.findall(r"^```(\w*)\n(.*?)^```$", section(), flags=re.M | re.S)
    assert found, f"no code block under {HEADING!r} in {PAGE}"
    return found


def files() -> dict[str, str]:
    """What the section asks a user to write: path -> text of every python and yaml block.

    The path is the first leading comment naming one: a yaml file that sets ``# @package``
    must keep that line first (hydra reads it only there), so its path comes second.
    """
    found: dict[str, str] = {}
    for lang, text in blocks():
        if lang not in ("python", "yaml"):
            continue
        header = takewhile(lambda line: line.startswith("#"), text.splitlines())
        paths = [m[1] for line in header if (m := PATH_COMMENT.match(line))]
        assert paths, f"a {lang} block names no file in its first comment lines:\n{text}"
        assert paths[0] not in found, f"{paths[0]} shown twice"
        found[paths[0]] = text
    return found


def commands() -> list[str]:
    """The bash block's commands: continuation lines joined, comment lines dropped."""
    (bash,) = [text for lang, text in blocks() if lang == "bash"]
    joined = re.sub(r"\\\n\s*", "", bash)
    lines = [line.strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def example_files() -> dict[str, str]:
    return {
        str(p.relative_to(EXAMPLE)): p.read_text()
        for p in sorted(EXAMPLE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_section_shows_every_file_of_the_example_as_it_is():
    shown = files()
    assert sorted(shown) == sorted(example_files())
    for path, text in example_files().items():
        assert shown[path] == text, f"{PAGE.name}: the block of {path} differs from the example"


def test_the_section_runs_the_group_options_and_a_class_override():
    group, override = commands()
    assert group.startswith("python -m distrib.train --config-dir conf model=tiny data=blobs")
    assert "task=dict_classification" in group
    assert override.startswith("python -m distrib.train model._target_=mypkg.nets.TinyNet")
    assert "~model.in_channels ~model.width +model.in_features=64" in override


def write_project(root: Path) -> None:
    for path, text in files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1], ids=["group-options", "class-override"])
def test_a_new_project_trains_with_the_commands_of_the_section(tmp_path: Path, index: int):
    """A user's run: only the section's files, cwd = the project, ``python`` from PATH and no
    PYTHONPATH, so ``mypkg`` is importable the way the section says (``python -m``)."""
    write_project(tmp_path)
    command = f"{commands()[index]} hydra.run.dir=run"  # a known directory to read back
    begin = time.monotonic()
    res = run_cli("bash", "-c", command, cwd=tmp_path, timeout=150, env={"PYTHONPATH": ""})
    assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "training on 2 worker(s)" in res.stdout
    final = re.search(r"^final evaluation: .*\beval_acc ([\d.]+)", res.stdout, flags=re.M)
    assert final, res.stdout[-3000:]
    assert float(final[1]) >= 0.8, final[0]
    cfg = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert cfg.model._target_ == "mypkg.nets.TinyNet"
    if index == 0:  # the task file's @package _global_ reached the trainer node
        assert cfg.task._target_ == "mypkg.tasks.DictClassification"
        assert cfg.trainer.checkpoint.best_metric == "eval_acc"
    else:  # the default's keys were dropped, the new one added, the rest kept
        assert dict(cfg.model) == {
            "_target_": "mypkg.nets.TinyNet",
            "num_classes": 10,
            "in_features": 64,
        }
    print(f"{command}: {time.monotonic() - begin:.1f} s, {final[0]}")
