"""The guide (``docs/``) and the README, its front page: built strictly and followed as written.

``mkdocs build --strict`` must pass: no broken link, anchor or API reference. Then every fenced
block of README.md and of each page of ``docs/guide/`` is taken as a reader takes it:

- ``bash``: run as one script with ``bash -e`` (continuation lines joined), so the first line
  that fails fails the block;
- ``console``: each ``$`` command is run, and every line shown under it (its output, such as a
  ``distrib: error:`` line) must be a line of what it printed, both stripped; a shown line that
  ends in ``...`` must begin one;
- ``python`` (and ``yaml``): a block whose first comment lines name a file (``# mypkg/nets.py``)
  is a file of the reader's project, written out before the page's commands run; any other
  python block is executed;
- any other language (``text``, a plain fence) is not run.

A block is not run here when the line before its opening fence says why: ``<!-- skip: REASON
-->`` (GPUs, real multi-node addresses, `make` targets of minutes; they are counted, and must
stay few) or ``<!-- tested by: tests/test_x.py::test_name -->``, naming the test that runs it
(checked to exist).

A page's blocks run in order, as a reader follows them, in one fresh directory that looks like
the repository's root (links to this venv as ``.venv``, to ``examples/``, ``launchers/``,
``tests/``, ``bench/`` and ``pyproject.toml``), so the commands' ``outputs/`` land there; with
this venv first on PATH, ``tests/`` on PYTHONPATH (``fixtures``) and WANDB_MODE=disabled.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cli

DOCS = ROOT / "docs"
GUIDE = DOCS / "guide"
PAGES = [
    "index.md",
    "own-model.md",
    "own-script.md",
    "multi-node.md",
    "slurm.md",
    "checkpoints.md",
    "fsdp.md",
    "streaming.md",
    "metrics.md",
    "speed.md",
    "benchmarks.md",
    "scale.md",
    "tools.md",
    "troubleshooting.md",
    "layout.md",
    "reference.md",
]
"""The guide's pages in the order of its nav."""
NOT_RUN = {"reference.md"}  # mkdocstrings' API reference: nothing to run
RUN = ["README.md", *(f"docs/guide/{p}" for p in PAGES if p not in NOT_RUN)]
LINKED = [".venv", "examples", "launchers", "tests", "bench", "pyproject.toml"]
MAX_SKIPPED = 10
BLOCK_TIMEOUT = 300

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SKIP = re.compile(r"^\s*<!-- skip: (\S.*?) -->$")
TESTED_BY = re.compile(r"^\s*<!-- tested by: (tests/[\w/]+\.py)::(\w+) -->$")
# "# mypkg/nets.py" or "# conf/task/x.yaml (...)": a relative path first on a comment line
PATH_COMMENT = re.compile(r"#\s*([\w.-]+(?:/[\w.-]+)*\.(?:py|yaml))(?:\s|$)")


@dataclass
class Block:
    page: str  # relative to the repository's root
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    marker: str  # the line before the opening fence

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def skip(self) -> str | None:
        m = SKIP.match(self.marker)
        return m[1] if m else None

    @property
    def tested_by(self) -> tuple[str, str] | None:
        m = TESTED_BY.match(self.marker)
        return (m[1], m[2]) if m else None

    @property
    def file(self) -> str | None:
        """The project file this block is, named by its leading comment lines (python, yaml)."""
        if self.lang not in ("python", "yaml"):
            return None
        header = takewhile(lambda line: line.startswith("#"), self.text.splitlines())
        paths = [m[1] for line in header if (m := PATH_COMMENT.match(line))]
        return paths[0] if paths else None

    @property
    def runs(self) -> bool:
        """Whether this test runs it: a command, or python that is not a project file."""
        if self.skip or self.tested_by:
            return False
        return self.lang in ("bash", "console") or (self.lang == "python" and not self.file)


def blocks(page: str) -> list[Block]:
    """Every fenced block of ``page``, its text dedented by its fence's indentation."""
    lines = (ROOT / page).read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m[1], m[2]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: a fence that is never closed"
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]]
        marker = lines[i - 1] if i > 0 else ""
        found.append(Block(page, i + 1, lang, "\n".join(body) + "\n", marker))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for page in RUN for b in blocks(page)]


# --- the site -------------------------------------------------------------------------------


def nav_pages() -> list[str]:
    config = yaml.safe_load((DOCS / "mkdocs.yml").read_text())
    return [next(iter(entry.values())) for entry in config["nav"]]


def test_the_nav_holds_every_page_once_in_the_guides_order():
    assert nav_pages() == PAGES
    assert sorted(p.name for p in GUIDE.glob("*.md")) == sorted(PAGES)


@pytest.mark.slow
@pytest.mark.docs
def test_the_site_builds_strictly_with_the_api_reference(tmp_path: Path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), "mkdocs is not installed: pip install -e '.[docs]' (make docs does)"
    site = tmp_path / "site"
    res = run_cli(
        str(mkdocs), "build", "--strict", "-f", str(DOCS / "mkdocs.yml"), "-d", str(site),
        env={"NO_MKDOCS_2_WARNING": "1"}, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    for page in PAGES:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), html
    reference = (site / "reference" / "index.html").read_text()
    public = re.search(r"__all__ = \[(.*?)\]", (ROOT / "distrib" / "__init__.py").read_text(), re.S)
    names = re.findall(r'"(\w+)"', public[1])
    assert len(names) > 10
    for name in [n for n in names if n != "__version__"]:
        assert f'id="distrib.{name}"' in reference, f"distrib.{name} is not in the reference"
    for name in ("tasks.Task", "tasks.TaskOutput", "tasks.Classification", "models.MLP",
                 "datasets.digits"):  # fmt: skip
        assert f'id="distrib.{name}"' in reference, name


# --- the README: the front page -------------------------------------------------------------


def test_the_readme_is_a_front_page_that_links_every_page_of_the_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    assert "make demo" in text and "make test" in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    relative = [link for link in links if "://" not in link]
    for link in relative:
        assert (ROOT / link).exists(), f"README.md links {link}, which does not exist"
    assert {f"docs/guide/{p}" for p in PAGES} <= set(relative)


# --- the markers ----------------------------------------------------------------------------


def test_every_block_not_run_says_why_and_the_skipped_are_few():
    marked = [b for b in all_blocks() if b.skip or b.tested_by]
    for block in marked:
        if block.tested_by:
            path, name = block.tested_by
            test_file = ROOT / path
            assert test_file.is_file(), f"{block.where}: tested by {path}, which does not exist"
            assert re.search(rf"^def {name}\(", test_file.read_text(), re.M), (
                f"{block.where}: {path} has no test {name}"
            )
        assert block.lang in ("bash", "console", "python", "text"), block.where
    skipped = [b for b in marked if b.skip]
    assert len(skipped) <= MAX_SKIPPED, [f"{b.where}: {b.skip}" for b in skipped]
    assert len(skipped) * 5 <= len(all_blocks()), "at most a fifth of the blocks may be skipped"
    # a marker anywhere else (misspelt, no reason, not right above a fence) is a mistake
    for page in RUN:
        lines = (ROOT / page).read_text().splitlines()
        for i, line in enumerate(lines):
            if "<!--" not in line or not re.search(r"<!--\s*(skip|tested)", line):
                continue
            where = f"{page}:{i + 1}"
            assert SKIP.match(line) or TESTED_BY.match(line), f"{where}: malformed: {line}"
            assert i + 1 < len(lines) and FENCE.match(lines[i + 1]), f"{where}: not above a fence"


def test_every_page_that_is_run_has_blocks_to_run():
    for page in RUN:
        assert [b for b in blocks(page) if b.runs], f"{page}: no block to run"
    assert sum(b.runs for b in all_blocks()) >= 30


# --- running the pages ----------------------------------------------------------------------


def repository_view(root: Path) -> Path:
    """A fresh directory that reads like the repository's root to the commands of a page."""
    root.mkdir()
    targets = {".venv": Path(sys.executable).parent.parent}
    for name in LINKED:
        (root / name).symlink_to(targets.get(name, ROOT / name))
    return root


def write_file(root: Path, block: Block) -> None:
    path = root / block.file  # type: ignore[operator]
    # not through a link into the repository (examples/, tests/, ...): the page's own directory
    assert path.parent.resolve().is_relative_to(root.resolve()), f"{block.where}: {block.file}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.text)


def joined(text: str) -> str:
    return re.sub(r"\\\n\s*", " ", text)


def console_commands(block: Block) -> list[tuple[str, list[str]]]:
    """``(command, the lines shown under it)`` of a console block."""
    commands: list[tuple[str, list[str]]] = []
    for line in joined(block.text).splitlines():
        if line.startswith("$ "):
            commands.append((line[2:].strip(), []))
        elif line.strip():
            assert commands, f"{block.where}: output before the first $ command"
            commands[-1][1].append(line.strip())
    assert commands and any(shown for _, shown in commands), f"{block.where}: nothing to check"
    return commands


def printed(shown: str, lines: set[str]) -> bool:
    if shown in lines:
        return True
    head = shown[:-3].rstrip()
    return shown.endswith("...") and any(line.startswith(head) for line in lines)


def run_block(block: Block, cwd: Path, scripts: Path) -> None:
    if block.lang == "bash":
        script = scripts / f"line{block.line}.sh"
        script.write_text(joined(block.text))
        res = run_cli("bash", "-e", str(script), cwd=cwd, timeout=BLOCK_TIMEOUT)
        assert res.returncode == 0, (
            f"{block.where}: exit {res.returncode}\n{block.text}\n"
            f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
        )
    elif block.lang == "console":
        for command, shown in console_commands(block):
            res = run_cli("bash", "-c", command, cwd=cwd, timeout=BLOCK_TIMEOUT)
            out = {line.strip() for line in (res.stdout + res.stderr).splitlines()}
            missing = [line for line in shown if not printed(line, out)]
            assert not missing, (
                f"{block.where}: `{command}` (exit {res.returncode}) did not print\n"
                + "\n".join(missing)
                + f"\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
            )
    elif block.lang == "python":
        res = run_cli(sys.executable, "-c", block.text, cwd=cwd, timeout=BLOCK_TIMEOUT)
        assert res.returncode == 0, (
            f"{block.where}: exit {res.returncode}\n{block.text}\n"
            f"--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
        )
    else:
        raise AssertionError(f"{block.where}: cannot run a {block.lang} block")


@pytest.mark.slow
@pytest.mark.docs
@pytest.mark.parametrize("page", RUN)
def test_the_commands_and_code_of_the_page_run_as_written(tmp_path: Path, page: str):
    found = blocks(page)
    to_run = [b for b in found if b.runs]
    assert to_run, f"{page}: no block to run"
    cwd = repository_view(tmp_path / "repo")
    scripts = tmp_path / "blocks"
    scripts.mkdir()
    for block in found:
        if block.file and not block.skip:
            write_file(cwd, block)
    times = []
    for block in to_run:
        begin = time.monotonic()
        run_block(block, cwd, scripts)
        times.append(f"{block.where} ({block.lang}) {time.monotonic() - begin:.1f} s")
    print("\n".join(times))


def test_a_console_block_checks_what_its_commands_print(tmp_path: Path):
    """The console check itself: a line a command did not print fails the block."""
    block = Block("x.md", 1, "console", "$ echo one\none\n$ echo two\nthree\n", "")
    with pytest.raises(AssertionError, match=r"did not print\n\s*three"):
        run_block(block, tmp_path, tmp_path)
    ok = Block("x.md", 1, "console", "$ echo 'a b c d'\na b ...\n", "")
    run_block(ok, tmp_path, tmp_path)
