"""Streamed (iterable) data: split over ranks and loader workers by global position, the same
order on any world size and worker count, resumed exactly (docs/guide/streaming.md)."""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, train_cli
from torch.utils.data import IterableDataset, get_worker_info

import distrib
from distrib.data import StreamLoader, loader
from distrib.distributed.process_group import Context
from distrib.env import WorkerEnv

SIZES = (40, 13, 27, 61, 8, 35, 22)  # 7 uneven shards: 206 samples, 12 batches of 16 (+14)
BATCH, WINDOW, EPOCH = 16, 50, 192


def reference(sizes: tuple[int, ...], seed: int, epoch: int, window: int) -> list[int]:
    """The documented epoch order, computed here without distrib.data.order (a bug there must
    fail this): shards permuted by (seed, epoch), concatenated, each window permuted."""
    shards = np.random.default_rng([seed, epoch, 0]).permutation(len(sizes))
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    stream = np.concatenate([base[s] + np.arange(sizes[s]) for s in shards])
    parts = []
    for w, lo in enumerate(range(0, len(stream), window)):
        part = stream[lo : lo + window]
        parts.append(part[np.random.default_rng([seed, epoch, 1, w]).permutation(len(part))])
    return np.concatenate(parts).tolist()


class Ids(IterableDataset):
    """A sharded source whose samples are their ids; each read appended to ``record``."""

    def __init__(self, record: Path | None = None, sizes: tuple[int, ...] = SIZES) -> None:
        self.sizes, self.record = sizes, record
        self.base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()

    def shard_sizes(self) -> tuple[int, ...]:
        return self.sizes

    def read(self, shard: int, offsets):  # type: ignore[no-untyped-def]
        assert list(offsets) == sorted(offsets) and 0 <= offsets[0] < self.sizes[shard]
        if self.record is not None:
            with open(self.record / f"{os.getpid()}.txt", "a") as f:
                f.write("".join(f"{self.base[shard] + o}\n" for o in offsets))
        yield from (torch.tensor(self.base[shard] + o) for o in offsets)

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the streaming loader reads shards, never iterates the whole")


def ctx(rank: int, world: int) -> Context:
    return Context(
        env=WorkerEnv(rank=rank, world_size=world), device=torch.device("cpu"), backend="gloo"
    )


def batches(ds, world: int, workers: int, epoch=0, start=0, accum=1, **kw):  # type: ignore[no-untyped-def]
    """Every rank's micro-batches (lists of ids) from ``start`` of ``epoch``."""
    out = []
    for rank in range(world):
        dl = loader(ds, batch_size=BATCH, ctx=ctx(rank, world), seed=3, accum=accum,
                    num_workers=workers, shuffle_buffer=WINDOW, **kw)  # fmt: skip
        assert isinstance(dl, StreamLoader)
        dl.sampler.set_position(epoch, start)
        got = [b.tolist() for b in dl]
        assert len(got) == len(dl)
        out.append(got)
    return out


def records(d: Path) -> list[int]:
    return [int(x) for p in d.glob("*.txt") for x in p.read_text().split()]


def test_two_ranks_by_two_workers_read_each_sample_once_in_the_same_steps_as_one(tmp_path: Path):
    for epoch in (0, 1):
        ref = reference(SIZES, 3, epoch, WINDOW)
        (one,) = batches(Ids(), 1, 0, epoch)
        assert [i for b in one for i in b] == ref[:EPOCH]  # the tail of 14 dropped
        rec = tmp_path / f"epoch{epoch}"
        rec.mkdir()
        r0, r1 = batches(Ids(rec), 2, 2, epoch)
        assert len(r0) == len(r1) == EPOCH // BATCH  # every rank the same steps
        for k in range(EPOCH // BATCH):  # global step k: the same samples as on one rank
            assert sorted(r0[k] + r1[k]) == sorted(ref[k * BATCH : (k + 1) * BATCH])
        counts = Counter(records(rec))  # what the loader workers read
        assert len(list(rec.glob("*.txt"))) == 4  # 2 ranks x 2 workers, each its part
        assert counts == Counter(ref[:EPOCH])  # each sample of the epoch read exactly once
    assert reference(SIZES, 3, 0, WINDOW) != reference(SIZES, 3, 1, WINDOW)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize(("world", "workers", "accum"), [(1, 0, 1), (2, 3, 2)])
def test_a_resume_on_any_world_size_and_worker_count_reads_the_rest_exactly_once(
    world: int, workers: int, accum: int
):
    ref = reference(SIZES, 3, 0, WINDOW)
    ranks = batches(Ids(), world, workers, start=64, accum=accum)
    assert len({len(r) for r in ranks}) == 1
    steps = zip(*[zip(*[iter(r)] * accum, strict=True) for r in ranks], strict=True)
    for k, step in enumerate(steps):  # the step after the resume point is global step 4
        got = sorted(i for rank in step for micro in rank for i in micro)
        assert got == sorted(ref[64 + k * BATCH : 64 + (k + 1) * BATCH])


def test_without_drop_last_the_last_batch_wraps_around_to_the_epoch_start():
    (one,) = batches(Ids(), 1, 0, drop_last=False)
    ref = reference(SIZES, 3, 0, WINDOW)
    assert [i for b in one for i in b] == ref + ref[:2]  # 206 -> 13 batches of 16


def test_evaluation_reads_every_sample_once_over_ranks_and_workers(tmp_path: Path):
    seen = []
    for rank in range(3):
        dl = distrib.eval_loader(Ids(tmp_path), batch_size=7, ctx=ctx(rank, 3), num_workers=2)
        got = [b.tolist() for b in dl]
        assert len(got) == len(dl) and all(len(b) <= 7 for b in got)
        seen += [i for b in got for i in b]
    assert seen == list(range(sum(SIZES)))  # in order, no padding: metrics count each once
    assert sorted(records(tmp_path)) == list(range(sum(SIZES)))


class Short(Ids):
    """A reader whose third shard lost samples after it was counted."""

    files = [Path(f"part-{i}.bin") for i in range(len(SIZES))]

    def read(self, shard: int, offsets):  # type: ignore[no-untyped-def]
        yield from list(super().read(shard, offsets))[: -1 if shard == 2 else None]


def test_a_shard_that_yields_fewer_samples_than_counted_is_one_line_naming_it():
    dl = loader(Short(), batch_size=BATCH, ctx=ctx(0, 1), num_workers=1, shuffle_buffer=WINDOW)
    with pytest.raises(distrib.ConfigError, match=r"^data.train: part-2.bin gave \d+ of the \d+"):
        list(dl)


class Plain(IterableDataset):
    """A user's own stream with only ``__iter__``; ``splits_itself`` over loader workers."""

    def __init__(self, n: int = 100, splits_itself: bool = False) -> None:
        self.n, self.splits_itself = n, splits_itself

    def __iter__(self):  # type: ignore[no-untyped-def]
        info = get_worker_info() if self.splits_itself else None
        mine = range(self.n) if info is None else range(info.id, self.n, info.num_workers)
        yield from (torch.tensor(i) for i in mine)


class PlainWithLen(Plain):
    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("cls", [Plain, PlainWithLen])
def test_a_plain_iterable_dataset_is_trained_on_once_per_epoch(cls: type):
    ds = cls(100)
    assert hasattr(ds, "__len__") == (cls is PlainWithLen)
    ranks = batches(ds, 2, 2)  # counted once when it has no __len__
    assert len(ranks[0]) == len(ranks[1]) == 100 // BATCH
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == 96 and len(set(seen)) == 96 and set(seen) <= set(range(100))
    assert seen != sorted(seen)  # shuffled within windows


def test_a_stream_that_splits_itself_over_workers_is_one_line_not_a_short_epoch():
    dl = loader(Plain(100, splits_itself=True), batch_size=BATCH, ctx=ctx(0, 1), num_workers=2)
    with pytest.raises(
        distrib.ConfigError, match=r"^data.train: Plain ended after \d+ samples"
    ) as e:
        list(dl)
    assert "\n" not in str(e.value) and "splits itself" in str(e.value)


def test_a_resume_over_other_data_or_another_shuffle_is_refused_naming_both_values():
    def saved(**kw):  # type: ignore[no-untyped-def]
        dl = loader(Ids(**kw.pop("ids", {})), batch_size=BATCH, ctx=ctx(0, 2), num_workers=2,
                    shuffle_buffer=kw.pop("window", WINDOW))  # fmt: skip
        return dl, dl.state_dict(0, 64)

    dl, state = saved()
    said = dl.check_resume(state, Path("step-00000004.pt"))
    assert "global sample 64 of epoch 1" in said and "written by 2 rank(s) x 2" in said
    other, _ = saved(window=60)
    with pytest.raises(
        distrib.ConfigError, match=r"shuffle window .* was 50 in step-00000004.pt, now 60"
    ):
        other.check_resume(state, Path("step-00000004.pt"))
    fewer, _ = saved(ids={"sizes": SIZES[:-1]})
    with pytest.raises(distrib.ConfigError, match=r"sample count was 206 in .*, now 184"):
        fewer.check_resume(state, Path("step-00000004.pt"))


def test_token_shards_stay_memory_mapped(tmp_path: Path):
    from distrib.datasets import TokenShards

    np.arange(32 * 2**20, dtype=np.uint16).tofile(tmp_path / "train.bin")  # 64 MB, ids wrap

    def anon_kb() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("RssAnon")).split()[1])

    before = anon_kb()
    ds = TokenShards(str(tmp_path / "train.bin"), seq_len=1024)
    dl = loader(ds, batch_size=8, ctx=ctx(0, 1), shuffle_buffer=64)
    first = [b for _, b in zip(range(4), dl, strict=False)]
    assert first[0].shape == (8, 1025) and first[0].dtype == torch.int64
    x = first[0][0]
    assert torch.equal(x, torch.arange(int(x[0]), int(x[0]) + 1025) % 2**16)  # one window
    assert all(isinstance(a, np.memmap) for a in ds._arrays.values())
    assert anon_kb() - before < 16 * 1024  # a copy of the array would be 64 MB


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("data.path={d}/missing.bin", "data.train: {d}/missing.bin: no such shard file"),
        ("data.path=[{d}/a.bin,{d}/gone.bin]", "data.train: {d}/gone.bin: no such shard file"),
        ("data.path={d}/cut.bin", "data.train: {d}/cut.bin: 1001 bytes is not a whole number"),
        ("data.path={d}/cut.npy", "data.train: {d}/cut.npy: not a readable .npy array (trunc"),
        ("data.path=[]", "data.train.path=[]: an empty list of shard files"),
        ("data.path={d}/empty", "data.train.path='{d}/empty': no shard files (.bin, .npy)"),
    ],
)
def test_bad_shards_are_one_line_naming_the_key_and_the_file_before_training(
    tmp_path: Path, override: str, said: str
):
    from distrib.cli.train import preflight

    np.arange(3000, dtype=np.uint16).tofile(tmp_path / "a.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:1001])
    np.save(tmp_path / "b.npy", np.arange(3000, dtype=np.uint16))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "b.npy").read_bytes()[:3000])
    (tmp_path / "empty").mkdir()
    d = str(tmp_path)
    with pytest.raises(distrib.ConfigError) as e:
        preflight(["task=lm", "model=tiny_gpt", "data=tokens", override.format(d=d)])
    assert str(e.value).startswith(said.format(d=d)) and "\n" not in str(e.value)


def write_parquet(d: Path, sizes: tuple[int, ...]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    g = torch.Generator().manual_seed(0)
    x = torch.randn(sum(sizes), 16, generator=g)
    y = (x @ torch.randn(16, 10, generator=g)).argmax(1)
    start = 0
    for i, n in enumerate(sizes):
        rows = {"x": x[start : start + n].tolist(), "y": y[start : start + n].tolist()}
        pq.write_table(pa.table(rows), d / f"part-{i}.parquet", row_group_size=16)
        start += n


def test_hf_shards_read_the_rows_asked_for_from_parquet_and_json_lines(tmp_path: Path):
    pytest.importorskip("datasets")
    from distrib.datasets import HFShards

    write_parquet(tmp_path, (50, 23))
    ds = HFShards(str(tmp_path), columns=["x", "y"])
    ds.batch_rows = 8  # several Arrow batches a file: skipping, continuing, going back
    assert ds.shard_sizes() == [50, 23]
    rows = list(ds)  # all rows in file order, as (x, y) tensors
    assert len(rows) == 73 and rows[50][0].shape == (16,) and rows[50][1].dtype == torch.int64
    for shard, offsets in [(0, [3, 17, 40]), (0, [41, 49]), (0, [2]), (1, [0, 22])]:
        got = list(ds.read(shard, offsets))  # forwards, then back (reopens), then the next file
        base = 50 * shard
        assert all(torch.equal(g[0], rows[base + o][0]) for g, o in zip(got, offsets, strict=True))
    lines = tmp_path / "j" / "a.jsonl"
    lines.parent.mkdir()
    lines.write_text("".join(f'{{"tokens": [{i}, {i + 1}, {i + 2}]}}\n' for i in range(9)))
    js = HFShards(str(lines))
    assert js.shard_sizes() == [9] and torch.equal(next(js.read(0, [5])), torch.tensor([5, 6, 7]))
    lines.write_text(lines.read_text()[:-9])  # cut mid-line
    with pytest.raises(distrib.ConfigError, match=r"a.jsonl: its first or last line is not a JSON"):
        HFShards.preflight(str(lines))
    cut = tmp_path / "part-1.parquet"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(distrib.ConfigError, match=r"part-1.parquet: not a readable parquet file"):
        HFShards.preflight(str(tmp_path), columns=["x", "y"])


# --- end to end: the trainer, real all_reduces, SIGKILL ------------------------------------

RUN = [
    "model=mlp",
    "model.in_features=16",
    "data.train._target_=fixtures.RecordedShards",
    "data.eval._target_=fixtures.RecordedShards",
    f"trainer.global_batch_size={BATCH}",
    f"trainer.shuffle_buffer={WINDOW}",
    "trainer.num_workers=2",
    "trainer.epochs=1",
    "trainer.log_every=4",
    "trainer.deterministic=true",
    "trainer.timeout_s=60",  # a rank left waiting in an all_reduce fails the run, soon
    "trainer.checkpoint.keep_last=10",
]
STEPS = EPOCH // BATCH


def train(run_dir: Path, *extra: str, nproc: int = 2, check: bool = True):  # type: ignore[no-untyped-def]
    res = train_cli(run_dir, *RUN, *extra, nproc=nproc)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step-{step:08d}.pt"
    return torch.load(path, weights_only=True)["model"]


def resumed_at(stdout: str) -> int:
    """The global samples into the epoch that a run says it resumed at."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("resumed from"))
    return int(line.split(" samples into the epoch")[0].rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """An uninterrupted epoch on 2 ranks x 2 loader workers; each sample read once."""
    root = tmp_path_factory.mktemp("straight")
    (root / "rec").mkdir()
    res = train(root / "run", f"+data.train.record_dir={root / 'rec'}")
    assert "each sample read once by one of 2 rank(s) x 2 reader(s)" in res.stdout
    assert "the last 14 dropped (trainer.drop_last=true)" in res.stdout
    assert Counter(records(root / "rec")) == Counter(reference(SIZES, 0, 0, WINDOW)[:EPOCH])
    return weights(root / "run", STEPS)  # both ranks made all 12 steps: none hung


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, SIGKILLed mid-epoch by a loader worker of rank 0 (checkpoints every 3)."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    # worker 0 of rank 0 reads its 41st sample for global step 11
    res = train(run_dir, "trainer.checkpoint.every_steps=3", "+data.train.kill_at=41", check=False)
    assert res.returncode != 0 and "killed by SIGKILL" in res.stderr, res.stderr[-3000:]
    return run_dir


def _resume(killed: Path, tmp_path: Path, nproc: int, workers: int) -> tuple[int, list[int]]:
    run_dir, rec = tmp_path / "run", tmp_path / "rec"
    shutil.copytree(killed, run_dir)
    rec.mkdir()
    res = train(run_dir, f"+data.train.record_dir={rec}", f"trainer.num_workers={workers}",
                nproc=nproc)  # fmt: skip
    assert "written by 2 rank(s) x 2 loader worker(s)" in res.stdout
    return resumed_at(res.stdout), records(rec)


@pytest.mark.slow
def test_sigkill_mid_epoch_with_loader_workers_then_resume_is_bit_exact(
    straight: dict, killed: Path, tmp_path: Path
):
    consumed, seen = _resume(killed, tmp_path, nproc=2, workers=2)
    assert 0 < consumed < EPOCH
    assert Counter(seen) == Counter(reference(SIZES, 0, 0, WINDOW)[consumed:EPOCH])
    final = weights(tmp_path / "run", STEPS)
    assert all(torch.equal(final[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_resume_at_one_rank_and_no_loader_workers_reads_the_rest_exactly_once(
    killed: Path, tmp_path: Path
):
    consumed, seen = _resume(killed, tmp_path, nproc=1, workers=0)
    assert 0 < consumed < EPOCH
    assert Counter(seen) == Counter(reference(SIZES, 0, 0, WINDOW)[consumed:EPOCH])


@pytest.mark.slow
def test_lm_on_memory_mapped_token_shards_trains_alike_on_two_workers_and_one(tmp_path: Path):
    from distrib.datasets import CHARS, text

    lookup = {c: i for i, c in enumerate(CHARS)}
    ids = np.array([lookup[c] for c in text(20_000)], dtype=np.uint16)
    (tmp_path / "data").mkdir()
    ids[:12_000].tofile(tmp_path / "data" / "a.bin")  # two uneven shards
    ids[12_000:].tofile(tmp_path / "data" / "b.bin")
    run = ["task=lm", "model=tiny_gpt", "data=tokens", f"data.path={tmp_path / 'data'}",
           "model.context=16", "data.seq_len=16", "model.dim=32", "model.layers=1", "optim=sgd",
           "optim.lr=0.3", "trainer.global_batch_size=32", "trainer.epochs=1",
           "trainer.shuffle_buffer=256", "trainer.log_every=8"]  # fmt: skip
    finals = []
    for nproc in (2, 1):
        res = train_cli(tmp_path / f"run{nproc}", *run, nproc=nproc)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "data.train: streaming 2 shard(s), 1248 samples" in res.stdout
        finals.append(weights(tmp_path / f"run{nproc}", 1248 // 32))
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_hf_parquet_shards_train_and_resume_mid_epoch_exactly(tmp_path: Path):
    pytest.importorskip("datasets")
    (tmp_path / "data").mkdir()
    write_parquet(tmp_path / "data", (50, 23, 71))  # 144 rows: 9 steps of 16
    run = ["model=mlp", "model.in_features=16", "data=hf", f"data.path={tmp_path / 'data'}",
           "data.columns=[x,y]", "trainer.num_workers=2", "trainer.global_batch_size=16",
           "trainer.shuffle_buffer=40", "trainer.deterministic=true"]  # fmt: skip

    def go(name: str, *extra: str):  # type: ignore[no-untyped-def]
        res = train_cli(tmp_path / name, *run, *extra, nproc=1)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    go("straight", "trainer.epochs=1")
    go("stopped", "trainer.epochs=1", "trainer.max_steps=4")  # 4 of the epoch's 9 steps
    res = go("stopped", "trainer.epochs=1")
    assert resumed_at(res.stdout) == 4 * 16
    a, b = weights(tmp_path / "straight", 9), weights(tmp_path / "stopped", 9)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_bad_shard_stops_the_cli_with_one_line_before_any_worker_starts(tmp_path: Path):
    res = run_cli(sys.executable, "-m", "distrib.train", "launcher.nproc=2", "task=lm",
                  "model=tiny_gpt", "data=tokens", f"data.path={tmp_path}/none.bin",
                  f"hydra.run.dir={tmp_path / 'run'}", timeout=120)  # fmt: skip
    assert res.returncode != 0
    said = f"distrib: error: data.train: {tmp_path}/none.bin: no such shard file or directory"
    assert res.stderr.strip() == said and "run directory" not in res.stdout
