"""Checkpoints: round trips, corruption and malice detected, retention, async, kill mid-write."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from distrib.checkpoint import Checkpointer, CheckpointError, files
from distrib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def make_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = OrderedDict(w=torch.randn(4, 3, generator=g), b=torch.zeros(3, dtype=torch.float64))
    return {
        "model": model,
        "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 0.1}]},
        "rng": torch.get_rng_state(),
        "meta": {"step": seed, "name": "run", "sizes": (1, 2), "flag": True, "none": None},
    }


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("async_save", [False, True])
def test_round_trip(tmp_path: Path, async_save: bool) -> None:
    ckpt = Checkpointer(tmp_path, async_save=async_save)
    state = make_state(1)
    ckpt.save(state, step=123, epoch=2, metrics={"acc": 0.5})
    ckpt.close()
    path = tmp_path / "step-00000123.pt"
    loaded, found = ckpt.latest_good()
    assert found == path
    assert_same(state, loaded)
    assert_same(state, torch.load(path, weights_only=True))  # plain torch.load reads it too
    entry = files.read_manifest(tmp_path)["step-00000123.pt"]
    assert entry["size"] == path.stat().st_size
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (entry["step"], entry["epoch"], entry["metrics"]) == (123, 2, {"acc": 0.5})
    assert (tmp_path / "latest").read_text().strip() == "step-00000123.pt"
    assert not list(tmp_path.glob(".tmp-*"))


def test_truncated_and_flipped_files_are_skipped_and_kept(tmp_path: Path, warnings_logged) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=5)
    for step in (10, 20, 30):
        ckpt.save(make_state(step), step=step, epoch=0)
    truncated, flipped = tmp_path / "step-00000030.pt", tmp_path / "step-00000020.pt"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))

    loaded, path = ckpt.latest_good()
    assert path == tmp_path / "step-00000010.pt"
    assert_same(make_state(10), loaded)
    messages = [r.getMessage() for r in warnings_logged]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert str(truncated) in messages[0] and "size mismatch" in messages[0]
    assert str(flipped) in messages[1] and "sha256 mismatch" in messages[1]
    assert truncated.exists() and flipped.exists()
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        ckpt.load(flipped)


def test_unlisted_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "step-00000001.pt"
    torch.save(make_state(), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError) as err:
        files.load_checkpoint(path, None)
    assert str(err.value).startswith(f"{path}: does not load") and "\n" not in str(err.value)


class RunsCode:
    """Unpickling this runs a shell command: what a tampered checkpoint would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_file_that_would_execute_code_is_refused(tmp_path: Path, warnings_logged) -> None:
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    ckpt = Checkpointer(tmp_path)
    ckpt.save(make_state(1), step=1, epoch=0)
    evil = tmp_path / "step-00000002.pt"
    torch.save({"model": RunsCode(f"touch {marker}")}, evil)
    entries = files.read_manifest(tmp_path)
    entries[evil.name] = {
        "size": evil.stat().st_size,
        "step": 2,
        "epoch": 0,
        "metrics": {},
        "sha256": hashlib.sha256(evil.read_bytes()).hexdigest(),
        "time": time.time() + 1,
        "parent": "step-00000001.pt",
    }
    files.write_manifest(tmp_path, entries)  # a valid checksum: only weights_only stands guard
    (tmp_path / "latest").write_text(evil.name + "\n")  # the head: resume tries it first

    loaded, path = ckpt.latest_good()
    assert path.name == "step-00000001.pt"
    with pytest.raises(CheckpointError) as err:
        ckpt.load(evil)
    message = str(err.value)
    assert message.startswith(f"{evil}:") and "weights_only" in message and "\n" not in message
    assert "system" in message
    assert len(warnings_logged) == 1 and str(evil) in warnings_logged[0].getMessage()
    assert not marker.exists()
    assert evil.exists()


def test_stale_tmp_is_ignored_then_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-killedwriter"
    stale.write_bytes(b"half a checkpoint")
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_good() is None
    ckpt.save(make_state(), step=1, epoch=0)
    assert not stale.exists()
    assert ckpt.latest_good()[1].name == "step-00000001.pt"


def test_file_missing_from_manifest_is_found(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save(make_state(1), step=1, epoch=0)
    torch.save(make_state(2), tmp_path / "step-00000002.pt")  # crash before the manifest update
    loaded, path = ckpt.latest_good()
    assert path.name == "step-00000002.pt"
    assert_same(make_state(2), loaded)


def test_async_save_copies_then_writes_in_background(tmp_path: Path, monkeypatch) -> None:
    gate, real_save = threading.Event(), files.save_atomic

    def gated_save(obj: dict, path: Path) -> tuple[int, str]:
        assert gate.wait(10)
        return real_save(obj, path)

    monkeypatch.setattr(files, "save_atomic", gated_save)
    ckpt = Checkpointer(tmp_path, async_save=True)
    state = make_state(1)
    ckpt.save(state, step=1, epoch=0)  # returns while the writer is held at the gate
    assert not (tmp_path / "step-00000001.pt").exists()
    state["model"]["w"].add_(100.0)  # training goes on in place; the snapshot must not change
    gate.set()
    ckpt.wait()
    loaded, _ = ckpt.latest_good()
    assert_same(make_state(1), loaded)
    ckpt.close()


def test_async_save_returns_before_the_write_finishes(tmp_path: Path) -> None:
    big = {"w": torch.randn(25_000_000)}  # 100 MB
    sync = Checkpointer(tmp_path / "sync")
    start = time.perf_counter()
    sync.save(big, step=1, epoch=0)
    sync_s = time.perf_counter() - start
    ckpt = Checkpointer(tmp_path / "async", async_save=True)
    start = time.perf_counter()
    ckpt.save(big, step=1, epoch=0)
    async_s = time.perf_counter() - start
    written_on_return = (tmp_path / "async" / "step-00000001.pt").exists()
    ckpt.close()
    assert not written_on_return  # hashing and writing 100 MB takes far longer than this check
    assert async_s < sync_s, (async_s, sync_s)  # typically 5x faster; loose so it cannot flake
    entry = files.read_manifest(tmp_path / "async")["step-00000001.pt"]
    assert_same(big, files.load_checkpoint(tmp_path / "async" / "step-00000001.pt", entry))


def test_async_write_error_is_raised_by_wait(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, async_save=True)
    ckpt.save({"fn": lambda: None}, step=1, epoch=0)  # cannot be pickled
    with pytest.raises(Exception, match="lambda"):
        ckpt.wait()
    ckpt.wait()  # raised once, not forever
    ckpt.close()
    assert not list(tmp_path.iterdir())


def test_disabled_rank_writes_nothing(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "ckpt", async_save=True, enabled=False)
    ckpt.save(make_state(), step=1, epoch=0)
    ckpt.close()
    assert not (tmp_path / "ckpt").exists()
    assert ckpt.latest_good() is None


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"keep_last": 0}, "checkpoint.keep_last"), ({"best_mode": "avg"}, "checkpoint.best_mode")],
)
def test_bad_settings_raise_config_error(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Checkpointer(tmp_path, **kwargs)


def test_broken_manifest_is_rebuilt_from_the_files_and_kept_aside(
    tmp_path: Path, warnings_logged
) -> None:
    ckpt = Checkpointer(tmp_path)
    ckpt.save(make_state(1), step=1, epoch=0)
    (tmp_path / "manifest.json").write_text("{not json")
    assert ckpt.latest_good()[1].name == "step-00000001.pt"
    said = warnings_logged[0].getMessage()
    assert "unreadable manifest" in said and "rebuilt from the 1 checkpoint(s)" in said
    assert (tmp_path / "manifest.json.bad").read_text() == "{not json"
    entry = json.loads((tmp_path / "manifest.json").read_text())["checkpoints"]["step-00000001.pt"]
    assert (
        entry["sha256"] == hashlib.sha256((tmp_path / "step-00000001.pt").read_bytes()).hexdigest()
    )
    ckpt.save(make_state(2), step=2, epoch=0)
    assert set(json.loads((tmp_path / "manifest.json").read_text())["checkpoints"]) == {
        "step-00000001.pt",
        "step-00000002.pt",
    }


def test_kill_during_async_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    proc = run_python(f"""
        import os, signal, time, torch
        from pathlib import Path
        from distrib.checkpoint import Checkpointer
        d = Path({str(tmp_path)!r})
        ckpt = Checkpointer(d, async_save=True)
        ckpt.save({{"w": torch.arange(10.0)}}, step=1, epoch=0)
        ckpt.wait()
        ckpt.save({{"w": torch.ones(50_000_000)}}, step=2, epoch=0)  # 200 MB
        deadline = time.monotonic() + 30
        while not list(d.glob(".tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # inside torch.save of the big tensor
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -9, proc.stderr
    assert list(tmp_path.glob(".tmp-*")), "the writer was not mid-write when killed"
    assert not (tmp_path / "step-00000002.pt").exists()
    loaded, path = Checkpointer(tmp_path).latest_good()
    assert path.name == "step-00000001.pt"
    assert torch.equal(loaded["w"], torch.arange(10.0))


def test_pending_async_write_completes_at_exit(tmp_path: Path) -> None:
    proc = run_python(f"""
        import torch
        from distrib.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r}, async_save=True)
        ckpt.save({{"w": torch.full((5_000_000,), 7.0)}}, step=7, epoch=1)
        # no wait() or close(): interpreter exit must finish the write
    """)
    assert proc.returncode == 0, proc.stderr
    loaded, path = Checkpointer(tmp_path).latest_good()
    assert path.name == "step-00000007.pt"
    assert torch.equal(loaded["w"], torch.full((5_000_000,), 7.0))
    assert "step-00000007.pt" in files.read_manifest(tmp_path)


def test_every_file_is_fsynced_before_its_rename_and_its_directory_after(
    tmp_path: Path, monkeypatch
) -> None:
    # A planted bug (no fsync of the temp file) once passed every test: record the calls.
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("replace", f"{os.path.realpath(src)} -> {os.path.realpath(dst)}"))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    ckpt = Checkpointer(tmp_path / "ckpt", keep_last=2)
    ckpt.save(make_state(), step=1, epoch=0)
    ckpt.close()
    renames = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    assert len(renames) >= 2  # the checkpoint, the manifest (and the latest pointer)
    directory = os.path.realpath(tmp_path / "ckpt")
    for i in renames:
        src, dst = events[i][1].split(" -> ")
        assert ("fsync", src) in events[:i], f"{src} renamed onto {dst} without an fsync"
        assert ("fsync", directory) in events[i + 1 :], f"rename onto {dst} not made durable"


def test_an_explicit_resume_file_that_would_run_code_is_refused_without_torchs_advice(
    tmp_path: Path,
) -> None:
    # Seen before: the error repeated torch's advice to re-run with weights_only=False.
    from distrib.cli.train import preflight

    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    evil = tmp_path / "evil.pt"
    torch.save({"model": RunsCode(f"touch {marker}")}, evil)
    with pytest.raises(ConfigError) as err:
        preflight([f"trainer.resume={evil}"])
    message = str(err.value)
    assert message.startswith(f"trainer.resume: {evil}: refused by weights_only=True:"), message
    assert "False" not in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_one_line_that_says_so_and_keeps_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    # Seen before: RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos ...
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        ckpt = Checkpointer(disk, keep_last=3)
        ckpt.save(make_state(1), step=1, epoch=0)
        big = {"model": {"w": torch.zeros(2**19)}}  # 2 MiB on a 1 MiB disk
        with pytest.raises(CheckpointError) as err:
            ckpt.save(big, step=2, epoch=0)
        message = str(err.value)
        assert message.startswith(f"{disk / 'step-00000002.pt'}: disk full on {disk} (")
        assert "MiB free, ~2.0 MiB needed)" in message
        assert "\n" not in message
        assert {p.name for p in disk.iterdir()} == {"step-00000001.pt", "manifest.json", "latest"}
        _, path = ckpt.latest_good()
        assert path.name == "step-00000001.pt"
    finally:
        subprocess.run(["umount", str(disk)], check=False)
