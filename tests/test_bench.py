"""The scaling benchmark (distrib/bench/scaling.py): it runs end to end, writes its outputs,
and every way trains the same model. Timings are never asserted: they are the benchmark's
output, not a property of the code, and this machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scaling_tiny_reports_every_way_and_every_way_trains_the_same_model(tmp_path: Path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        # one workload: the others are the same code with other sizes (a minute more here)
        [sys.executable, "-m", "distrib.bench", "scaling", "--tiny", "--workload", "compute"]
        + ["--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"results in {out}/" in proc.stdout
    # stderr is a pipe here, as in `... > log`: plain progress lines, no carriage returns
    assert "\r" not in proc.stderr and "distrib.bench: 1/" in proc.stderr
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "results.json").read_text())
    assert set(result["workloads"]) == {"compute"}
    for name, workload in result["workloads"].items():
        ways = workload["ways"]
        assert {"plain", "trainer 1", "distrib 2", "raw DDP 2"} <= set(ways)
        losses = {}
        for way, row in ways.items():
            assert f"| {name} | {way} | {row['workers']} |" in proc.stdout  # a table row each
            assert "error" not in row, f"{name}/{way}: {row.get('error')}"
            if "skipped" in row:  # Fabric / Accelerate where not installed
                continue
            assert row["samples_per_s"] > 0 and row["launch_to_first_step_s"] > 0
            losses[way] = row["first_step_loss"]
        # same init, same samples in the same order: equal up to float summation order
        assert max(losses.values()) - min(losses.values()) < 1e-6, (name, losses)
        d = workload["derived"]  # one repeat: each ratio's per-repeat range is the ratio itself
        for ratio in ("distrib_over_raw_ddp_step_time", "distrib_over_torchrun_launch"):
            assert d[f"{ratio}_range"] == [pytest.approx(d[ratio])] * 2, (ratio, d)
    tta = result["time_to_accuracy"]
    assert set(tta) == {"trainer 1", "distrib 2"}
    for run in tta.values():
        assert len(run["curve"]) == run["epochs"] >= 1
        assert all(0.0 <= acc <= 1.0 for _, acc in run["curve"])


def test_raw_ddp_script_imports_nothing_of_distrib():
    """Run by path (as torchrun does), the baseline script must time torch alone."""
    script = REPO / "distrib" / "bench" / "raw_ddp.py"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()]
    assert "workloads" in imported
    assert not [m for m in imported if m == "distrib" or m.startswith("distrib.")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_the_plain_loop_and_the_trainer_train_alike_in_either_precision(
    precision: str, tmp_path: Path
):
    import dataclasses

    from distrib.bench import ways
    from distrib.bench import workloads as w

    spec = dataclasses.replace(w.workloads(tiny=True)["compute"], precision=precision)
    plain = ways.measure(ways._plain(spec, 2, tmp_path, True), spec.global_batch)
    trainer = ways.measure(
        ways._trainer(1, launched=False)(spec, 2, tmp_path, True), spec.global_batch
    )
    assert plain["first_loss"] == trainer["first_loss"]  # same ops, in the same order
    fp32 = dataclasses.replace(spec, precision="fp32")
    reference = ways.measure(ways._plain(fp32, 2, tmp_path, True), spec.global_batch)
    assert (plain["first_loss"] == reference["first_loss"]) == (precision == "fp32")


def test_ways_picks_a_subset_and_the_ratios_of_the_missing_ways_are_none(tmp_path: Path):
    from distrib.bench import scaling

    args = scaling.parse(["--tiny", "--workload", "wide", "--ways", "plain,trainer", "--no-tta"])
    args.out = tmp_path
    result = scaling.run(args)["workloads"]["wide"]
    assert set(result["ways"]) == {"plain", "trainer 1"}
    derived = result["derived"]
    assert derived["trainer1_over_plain_step_time"] > 0
    assert derived["distrib_over_raw_ddp_step_time"] is None
    assert derived["compiled_over_eager_step_time"] is None  # not named: not run
    for row in result["ways"].values():  # a CPU: TFLOP/s, but no peak, so no MFU
        assert row["tflops_per_s"] > 0 and "mfu" not in row
    assert result["peak_tflops"] is None


def test_the_compiled_way_runs_only_when_named_and_is_the_trainer_with_compile_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from distrib.bench import scaling, ways
    from distrib.bench import workloads as w

    def names(*argv: str) -> list[str]:
        return [way.name for way in scaling.chosen_ways(scaling.parse(list(argv)))]

    assert names("--ways", "trainer,compiled") == ["trainer 1", "compiled 1"]
    assert names("--ways", "plain,trainer") == ["plain", "trainer 1"]
    assert "compiled 1" not in names()  # the default set compiles nothing
    seen = {}  # each way's trainer config, without training (nothing compiles here)
    monkeypatch.setattr(ways, "run_trainer", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    spec = w.workloads(tiny=True)["wide"]
    for way in ways.ways(2)[1:3]:
        seen.clear()
        way.runner(spec, 2, tmp_path, False)
        assert seen["cfg"]["trainer"]["compile"]["enable"] is (way.name == "compiled 1"), way
    # dynamo does not compile nn.Sequential's own forward: the bench model has one of its own
    model = w.build_model(**spec.model)
    assert type(model).forward is not torch.nn.Sequential.forward


def test_the_report_gives_compiled_over_eager_and_tflops_and_mfu_per_way():
    from distrib.bench import report, scaling
    from distrib.bench import workloads as w
    from distrib.bench.ways import Way

    spec = w.workloads(tiny=True)["wide"]
    flops = scaling.flops_per_sample(spec)
    # MLP 512 -> 64 x 4 -> 10: 2 FLOPs a weight forward, 4 backward, less the first layer's
    # input gradient (the data needs none)
    layers = [(512, 64), (64, 64), (64, 64), (64, 64), (64, 10)]
    assert flops == 6 * sum(i * o for i, o in layers) - 2 * 512 * 64

    def row(step_ms: list[float]) -> dict:
        runs = [{"step_ms_median": t, "samples_per_s": 1e3 * 16 / t} for t in step_ms]
        return {"workers": 1, "family": "distrib", "runs": runs,
                "step_ms_median": step_ms[1], "samples_per_s": 1e3 * 16 / step_ms[1]}  # fmt: skip

    all_ways = [Way("trainer 1", 1, "distrib", None), Way("compiled 1", 1, "distrib", None)]
    out = {"trainer 1": row([9.0, 10.0, 11.0]), "compiled 1": row([4.0, 5.0, 6.0])}
    scaling._throughput(out, flops=1e9, peak=6.4)  # 16 samples in 5 ms: 3.2 TFLOP/s, half of 6.4
    assert out["compiled 1"]["tflops_per_s"] == pytest.approx(3.2)
    assert out["compiled 1"]["mfu"] == pytest.approx(0.5)
    derived = scaling.derived(out, all_ways)
    assert derived["compiled_over_eager_step_time"] == pytest.approx(0.5)
    config = {"workers": 2, "repeats": 3, "device": "a GPU", "cores": 2, "torch": "2"}
    table = report.markdown(
        {"config": config, "workloads": {"wide": {"ways": out, "derived": derived}}}
    )
    lines = table.splitlines()
    head = next(ln for ln in lines if ln.startswith("| workload | way |"))
    assert head.endswith("| TFLOP/s | MFU |")
    assert next(ln for ln in lines if ln.startswith("| wide | compiled 1 |")).endswith(
        "| 3.2 | 50.0% |"
    )
    ratios = next(ln for ln in lines if ln.startswith("| workload | scaling eff distrib"))
    column = ratios.split(" | ").index("compiled 1 / trainer 1 step time")
    wide = next(ln for ln in lines if ln.startswith("| wide | -"))
    assert wide.split(" | ")[column] == "0.50 [0.44, 0.55]"


@pytest.mark.slow
def test_memory_fsdp_holds_half_of_what_ddp_holds_per_rank_at_two_workers(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "distrib.bench", "memory", "--hidden", "128", "--depth", "2",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {
        (r["strategy"], r["workers"]): r for r in json.loads((tmp_path / "memory.json").read_text())
    }
    assert set(rows) == {("ddp", 1), ("ddp", 2), ("fsdp", 1), ("fsdp", 2)}

    def held(r: dict) -> int:
        return r["params_bytes"] + r["grads_bytes"] + r["optim_bytes"]

    assert held(rows[("ddp", 2)]) == held(rows[("ddp", 1)]) == held(rows[("fsdp", 1)])
    assert held(rows[("fsdp", 2)]) / held(rows[("ddp", 2)]) <= 0.6  # the bound
    two_moments = 2 * rows[("ddp", 1)]["params_bytes"]  # AdamW, plus a step count per tensor
    assert two_moments <= rows[("ddp", 1)]["optim_bytes"] <= two_moments + 1024
    assert "fsdp / ddp at 2 workers = " in proc.stdout


@pytest.mark.slow
def test_checkpoint_bench_with_fsdp_reports_sync_and_async(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "distrib.bench", "checkpoint", "--strategy", "fsdp", "--mb", "4",
         "--repeats", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "fsdp on 2 workers" in proc.stdout and "async blocked / sync     = " in proc.stdout


def test_the_scaling_plot_keeps_launched_runs_apart_from_in_process_ones_and_shows_spread():
    from distrib.bench.report import figure

    def row(family: str, workers: int, rates: list[float]) -> dict:
        runs = [{"samples_per_s": r} for r in rates]
        return {"family": family, "workers": workers, "samples_per_s": sorted(rates)[1],
                "runs": runs}  # fmt: skip

    ways = {
        "plain": row("torch", 1, [90, 100, 110]),
        "trainer 1": row("distrib", 1, [95, 100, 105]),
        "distrib 2": row("distrib", 2, [150, 160, 170]),
        "raw DDP 2": row("torch", 2, [140, 150, 160]),
    }
    fig = figure({"workloads": {"compute": {"ways": ways}}})
    left = fig.axes[0]
    bars = {c.get_label(): c for c in left.containers}
    # the distrib line is the launched runs only: not the trainer in process at 1 worker
    assert list(bars["compute: distrib N"].lines[0].get_xdata()) == [2]
    assert list(bars["compute: trainer in process"].lines[0].get_xdata()) == [1]
    # each point has its repeats' range as a bar, lowest to highest
    segments = bars["compute: distrib N"].lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [(150, 170)]
    # the legend sits below the axes, over none of the points
    fig.canvas.draw()
    legend = left.get_legend().get_window_extent()
    assert legend.y1 <= left.get_window_extent().y0


@pytest.mark.slow
def test_data_bench_reports_on_disk_shards_with_0_and_2_workers_beside_memory():
    proc = subprocess.run(
        [sys.executable, "-m", "distrib.bench", "data", "--steps", "3", "--repeats", "1",
         "--shard-steps", "3", "--shard-repeats", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    head = "| samples/s (token windows of 65, batch 64, TinyGPT) | in memory, by index | "
    assert head + "on disk, 0 workers | on disk, 2 workers |" in proc.stdout
    for row in ("| loading alone (an epoch) |", "| loading + training step (3) |"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(row))
        rates = [float(v.replace(",", "")) for v in line.strip("|").split("|")[1:]]
        assert len(rates) == 3 and all(r > 0 for r in rates), line
