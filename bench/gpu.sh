#!/usr/bin/env bash
# The GPU checks (issues 9 and 17) as one prepared run on a lent GPU machine (the workplace's
# `device` tool; its python3 has torch but not hydra-core, omegaconf, antlr4 or submitit):
#
#   here, once:  bash bench/gpu.sh --wheels        # those four as wheels in .whl/ (git-ignored)
#   there:       run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
#
# It prints, and writes under $OUT: the environment; the CUDA/NCCL tests (test_process_group,
# test_wrap); the host's blocking calls per step of `fit` on the GPU; the plain loop against
# distrib's trainer on 1 GPU in fp32, bf16 and fp16 (the <= 1.02 target; each row with its
# TFLOP/s and MFU); the trainer compiled vs eager in bf16 on the wide workload (compiled / eager
# step time, MFU of each; the bench has no TinyGPT workload yet); then distrib 1 against raw
# DDP 1 launched; fsdp vs ddp in bf16 (memory bench, step time, peak). About 8-9 minutes; each
# part goes on if an earlier one failed. DRY_RUN=1 runs it on a CPU (tiny bench) to check the
# script itself.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--wheels" ]]; then
    PY=${PY:-.venv/bin/python}
    ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d .whl "hydra-core==$(ver hydra-core)" \
        "omegaconf==$(ver omegaconf)" "submitit==$(ver submitit)"
    "$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(ver antlr4-python3-runtime)"
    ls .whl
    exit 0
fi

OUT=${OUT:-/tmp/distrib-gpu}
SITE=/tmp/distrib-site
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$PWD:$PWD/tests:$SITE" PYTHONUNBUFFERED=1 WANDB_MODE=disabled

echo "== environment"
python3 -m distrib env | tee "$OUT/env.txt"

echo "== CUDA and NCCL tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_process_group.py \
    tests/test_wrap.py 2>&1 | tee "$OUT/tests.txt" | tail -12

echo "== blocking calls per step of fit on the GPU (log_every=10; target <= 0.2)"
timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/blocking.txt"
import torch
from test_loop import _count_blocking_calls, small_run

def run(steps):
    values = small_run(epochs=1, max_steps=steps, log_every=10, global_batch_size=16)
    values["data"]["train"]["size"] = 16 * 400 * 5 // 4
    return values

assert torch.cuda.is_available() or __import__("os").environ.get("DRY_RUN"), "no CUDA GPU"
# fit picks the GPU itself (device=auto); each call counts afresh (its own wrappers)
short, long = _count_blocking_calls(run(100)), _count_blocking_calls(run(300))
where = "cuda" if torch.cuda.is_available() else "cpu (dry run)"
print(f"{where}, 1 worker: {(long - short) / 200:.3f} blocking calls per step")
PY

for precision in fp32 bf16 fp16; do
    echo "== plain 1 GPU vs trainer 1 GPU, $precision (target <= 1.02)"
    timeout 100 python3 -m distrib.bench scaling --workload wide --ways plain,trainer \
        --repeats 3 --no-tta --precision "$precision" --out "$OUT/$precision" ${DRY_RUN:+--tiny} 2>/dev/null | grep "^| wide\|^| workload"
done

echo "== compiled vs eager, bf16 (wide; the bench has no gpt workload): trainer 1 vs compiled 1"
timeout 180 python3 -m distrib.bench scaling --workload wide --ways trainer,compiled --precision bf16 \
    --no-tta --repeats 3 --out "$OUT/compile" ${DRY_RUN:+--tiny} 2>/dev/null | grep "^| wide\|^| workload"

echo "== distrib 1 vs raw DDP 1 (launched), fp32"
timeout 150 python3 -m distrib.bench scaling --workload wide --ways distrib,raw --workers 1 --repeats 2 \
    --no-tta --out "$OUT/launched" ${DRY_RUN:+--tiny} 2>/dev/null | grep "^| wide\|^| workload"

echo "== fsdp vs ddp, bf16: step time and peak memory (issue 17; on 1 GPU both hold the whole"
echo "   model, so the sharded figures need >= 2 GPUs: the memory bench uses all visible ones)"
GPUS=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
timeout 150 python3 -m distrib.bench memory --workers "$GPUS" --hidden 4096 --depth 4 \
    --out "$OUT/memory" 2>/dev/null | grep "^|\|fsdp / ddp"
for strategy in ddp fsdp; do
    timeout 150 python3 -m distrib.train model=mlp data=synthetic trainer.strategy=$strategy \
        trainer.precision=bf16 model.hidden=4096 model.depth=4 trainer.global_batch_size=512 \
        trainer.epochs=1 launcher.nproc="$GPUS" logger=[jsonl] "hydra.run.dir=$OUT/train-$strategy" \
        >/dev/null 2>&1
    python3 - "$OUT/train-$strategy/metrics.jsonl" "$strategy" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"step_time_mean"' in line]
last = rows[-1] if rows else {}
print(f"{sys.argv[2]}: step_time_mean {last.get('step_time_mean')} s, peak_memory_mb {last.get('peak_memory_mb')}")
PY
done
