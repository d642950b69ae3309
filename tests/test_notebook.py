"""`distrib.notebook_launch` in a real Jupyter kernel: the example trains, a worker's error names
its rank in the cell, an interrupt leaves no worker behind and the kernel working; and the
one-line refusals of state a forked worker cannot use."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import distrib

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _notebook(*sources: str) -> Any:
    nbformat = pytest.importorskip("nbformat")
    cells = [nbformat.v4.new_code_cell(textwrap.dedent(src)) for src in sources]
    return nbformat.v4.new_notebook(cells=cells)


def _client(nb: Any, cwd: Path) -> Any:
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    return nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )


def _text(cell: Any) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []))


@pytest.mark.slow
def test_example_notebook_trains_to_high_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")  # the digits
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells), "examples/notebook.ipynb has outputs"
    _client(nb, tmp_path).execute()
    printed = "".join(_text(c) for c in nb.cells)
    match = re.search(r"accuracy (\d\.\d+) on 2 workers", printed)
    assert match and float(match.group(1)) >= 0.9, printed
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no loss plot"


@pytest.mark.slow
def test_worker_error_fails_the_cell_naming_its_rank(tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nb = _notebook(
        """
        import distrib

        def fail_on_one():
            ctx = distrib.init()
            if ctx.rank == 1:
                raise ValueError("boom")
            return ctx.rank
        """,
        "distrib.notebook_launch(fail_on_one, nproc=2, failure_grace_s=1)",
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        _client(nb, tmp_path).execute()
    (error,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert error.ename == "RuntimeError"
    assert error.evalue == "rank 1 failed: ValueError: boom"
    shown = "\n".join(error.traceback)
    assert "rank 1's traceback" in shown and "in fail_on_one" in shown, shown  # the note


SLEEPER = """
import os, signal, time
import distrib

handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}

def sleep_forever(out):
    ctx = distrib.init()
    if ctx.rank == 1:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # deaf to the interrupt: SIGKILL it is
    with open(os.path.join(out, f"{ctx.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie its parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def _interrupt_while_running(nb: Any, cwd: Path, out: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    client = _client(nb, cwd)
    async with client.async_setup_kernel():
        await client.async_execute_cell(nb.cells[0], 0)
        running = asyncio.ensure_future(client.async_execute_cell(nb.cells[1], 1))
        for _ in range(600):
            if len(list(out.glob("*.pid"))) == 2 or running.done():
                break
            await asyncio.sleep(0.05)
        assert not running.done(), _text(nb.cells[1])
        await client.km.interrupt_kernel()
        with pytest.raises(nbclient.exceptions.CellExecutionError) as raised:
            await running
        assert raised.value.ename == "KeyboardInterrupt", raised.value
        pids = [int(p.read_text()) for p in out.glob("*.pid")]
        assert len(pids) == 2 and all(_gone(pid) for pid in pids), pids
        await client.async_execute_cell(nb.cells[2], 2)


@pytest.mark.slow
def test_interrupt_stops_every_worker_and_the_kernel_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "pids"
    out.mkdir()
    nb = _notebook(
        SLEEPER,
        f"distrib.notebook_launch(sleep_forever, {str(out)!r}, nproc=2, signal_grace_s=1)",
        """
        now = {s: signal.getsignal(s) for s in handlers}
        print("handlers restored:", now == handlers)
        print("ranks:", sorted(distrib.notebook_launch(lambda: distrib.init().rank, nproc=2)))
        """,
    )
    asyncio.run(_interrupt_while_running(nb, tmp_path, out))
    assert _text(nb.cells[2]) == "handlers restored: True\nranks: [0, 1]\n"


def test_cuda_initialised_is_refused_before_anything_starts(monkeypatch) -> None:
    import torch

    import distrib.launch.notebook as notebook

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("workers started")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(notebook, "launch", never)
    with pytest.raises(RuntimeError, match="^CUDA is already initialised in this kernel") as e:
        distrib.notebook_launch(print, nproc=2)
    assert "restart the kernel and call distrib.notebook_launch before any CUDA use" in str(e.value)


def test_a_context_in_the_kernel_is_refused() -> None:
    distrib.init(device="cpu")  # world 1: every forked worker would inherit rank 0 of 1
    with pytest.raises(RuntimeError, match=r"^distrib.init\(\) was already called"):
        distrib.notebook_launch(print, nproc=2)


def test_a_stale_openmp_pool_is_detected() -> None:
    code = """
    import torch
    from distrib.launch.fork import openmp_forks_safely

    fresh = openmp_forks_safely(2, timeout_s=30)
    torch.set_num_threads(2)
    torch.ones(1 << 17).mul_(2)  # this process's OpenMP pool now has a thread a fork loses
    print(fresh, openmp_forks_safely(2, timeout_s=2), openmp_forks_safely(1, timeout_s=30))
    """
    res = subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert res.stdout.split() == ["True", "False", "True"], res.stderr[-2000:]


def test_importing_distrib_imports_no_launch_side() -> None:
    code = "import sys, distrib; print(sorted(m for m in sys.modules if 'distrib.launch' in m))"
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
