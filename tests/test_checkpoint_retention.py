"""Which checkpoints are kept and which one resumes: one rule for retention and resume.

The rule (README "Checkpoints"): each checkpoint records its parent, ``latest`` is the head of
the run's lineage, resume walks that lineage to its newest good file, bad files are marked and
kept but never counted among the kept. The randomized test checks it against its own model.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from test_checkpoint import assert_same, make_state

from distrib.checkpoint import Checkpointer, files


def test_retention_keeps_last_k_and_best(tmp_path: Path) -> None:
    orphan = tmp_path / "step-00000000.pt"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.ones(1)}, orphan)  # not in the manifest: retention leaves it alone
    ckpt = Checkpointer(tmp_path, keep_last=2, best_metric="loss", best_mode="min")
    for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.7), (5, 0.3), (6, 0.4)]:
        ckpt.save(make_state(step), step=step, epoch=0, metrics={"loss": loss})
    kept = {"step-00000002.pt", "step-00000005.pt", "step-00000006.pt"}
    assert {p.name for p in tmp_path.glob("step-*.pt")} == kept | {orphan.name}
    assert set(files.read_manifest(tmp_path)) == kept


def test_retention_without_metric_and_max_mode(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=1, best_metric="acc")
    ckpt.save(make_state(1), step=1, epoch=0, metrics={"acc": 0.9})
    ckpt.save(make_state(2), step=2, epoch=0)  # no metric (e.g. a preemption save)
    ckpt.save(make_state(3), step=3, epoch=0, metrics={"acc": 0.8})
    assert set(files.read_manifest(tmp_path)) == {"step-00000001.pt", "step-00000003.pt"}


def test_after_a_resume_from_an_earlier_step_auto_resumes_the_new_lineage(tmp_path: Path) -> None:
    # Seen before: after trainer.resume=<step 6>, retention deleted step 6 and a later
    # resume=auto picked step 10 of the abandoned run (highest step wins).
    ckpt = Checkpointer(tmp_path, keep_last=3)
    for step in (2, 4, 6, 8, 10):
        ckpt.save(make_state(step), step=step, epoch=0)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt"))[0] == "step-00000006.pt"
    ckpt.load(tmp_path / "step-00000006.pt")  # the user resumes from step 6 ...
    time.sleep(0.01)
    ckpt.save(make_state(7), step=7, epoch=0)  # ... and the run goes on from there
    loaded, path = ckpt.latest_good()
    assert path.name == "step-00000007.pt"
    assert_same(make_state(7), loaded)


def test_bad_files_leave_the_good_set_and_the_last_good_one_is_never_deleted(
    tmp_path: Path, warnings_logged
) -> None:
    # Seen before: with step 8 truncated and step 6 bit-flipped, retention deleted step 3 --
    # the only good checkpoint -- and kept both bad ones in the manifest.
    first = Checkpointer(tmp_path, keep_last=3)
    for step in (3, 6, 8):
        first.save(make_state(step), step=step, epoch=0)
    ckpt = Checkpointer(tmp_path, keep_last=2)
    eight, six = tmp_path / "step-00000008.pt", tmp_path / "step-00000006.pt"
    eight.write_bytes(eight.read_bytes()[:-100])
    data = bytearray(six.read_bytes())
    data[len(data) // 2] ^= 0xFF
    six.write_bytes(bytes(data))

    _, path = ckpt.latest_good()
    assert path.name == "step-00000003.pt"
    marked = files.read_manifest(tmp_path)
    assert marked["step-00000008.pt"]["bad"] and marked["step-00000006.pt"]["bad"]
    assert not marked["step-00000003.pt"].get("bad")
    ckpt.save(make_state(4), step=4, epoch=0)  # the resumed run saves: 3 and 4 are the good two
    names = {p.name for p in tmp_path.glob("step-*.pt")}
    assert names == {"step-00000003.pt", "step-00000004.pt", "step-00000006.pt", "step-00000008.pt"}
    _, path = Checkpointer(tmp_path).latest_good()
    assert path.name == "step-00000004.pt"
    assert len(warnings_logged) == 2  # each bad file reported once, then skipped quietly


def test_a_run_restarted_from_an_earlier_step_keeps_what_it_just_wrote(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for step in (2, 4, 6):
        ckpt.save(make_state(step), step=step, epoch=0)
    restarted = Checkpointer(tmp_path, keep_last=1)  # resumed from step 2, say, and saves 3
    restarted.save(make_state(3), step=3, epoch=0)
    assert {p.name for p in tmp_path.glob("step-*.pt")} == {"step-00000003.pt"}


def _expected_resume(parent: dict[str, str | None], head: str | None, good: set[str], d: Path):
    """The test's own model: the newest good file on disk along the lineage from ``head``;
    else (the whole lineage bad or gone) the newest-written good file on disk."""
    name, seen = head, set()
    while name and name not in seen:
        seen.add(name)
        if name in good and (d / name).exists():
            return name
        name = parent.get(name)
    return None


@pytest.mark.parametrize("seed", range(200))
def test_random_saves_resumes_corruptions_and_deletions_resume_the_lineages_newest_good(
    tmp_path: Path, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    keep = rng.choice([1, 2, 3])
    ckpt = Checkpointer(tmp_path, keep_last=keep)
    parent: dict[str, str | None] = {}
    good: set[str] = set()
    head: str | None = None
    step = 0
    for _ in range(rng.randint(4, 14)):
        on_disk = sorted(p.name for p in tmp_path.glob("step-*.pt"))
        op = rng.choices(["save", "resume", "corrupt", "delete", "crash"], [5, 2, 1, 1, 2])[0]
        if op == "save":
            step += rng.randint(1, 3)
            ckpt.save({"step": torch.tensor(step)}, step=step, epoch=0)
            name = files.checkpoint_name(step)
            parent[name], head = head, name
            good.add(name)
            assert any(n in good for n in (p.name for p in tmp_path.glob("step-*.pt")))
        elif op == "resume" and (choices := [n for n in on_disk if n in good]):
            name = rng.choice(choices)  # trainer.resume=<that file>
            ckpt.load(tmp_path / name)
            head, step = name, files.step_of(name) or 0
        elif op == "corrupt" and on_disk:
            victim = tmp_path / rng.choice(on_disk)
            victim.write_bytes(victim.read_bytes()[:-7])  # truncated: bad however often it is hit
            good.discard(victim.name)
        elif op == "delete" and on_disk:
            victim = tmp_path / rng.choice(on_disk)
            victim.unlink()
            good.discard(victim.name)
        elif op == "crash":  # a new process resumes with trainer.resume=auto
            ckpt = Checkpointer(tmp_path, keep_last=keep)
            found = ckpt.latest_good()
            expected = _expected_resume(parent, head, good, tmp_path)
            if expected is not None:
                assert found is not None and found[1].name == expected, (seed, expected)
                head, step = expected, files.step_of(expected) or 0
            elif found is not None:  # nothing good on the lineage: the newest good elsewhere
                assert found[1].name in good
                head, step = found[1].name, files.step_of(found[1].name) or 0
    found = Checkpointer(tmp_path).latest_good()
    expected = _expected_resume(parent, head, good, tmp_path)
    if expected is not None:
        assert found is not None and found[1].name == expected, (seed, expected)
