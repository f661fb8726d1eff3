#!/usr/bin/env bash
# One lent-GPU session (a single device call): issue 19's GPU figures and issue 16's retraining.
#
#   1. simulate the training population on the CPUs (lite preset, body scenes, phantom + shape-model
#      femurs, orthogonal + generalized views): N_LINE line-integral and N_CLINICAL clinical-mode
#      subjects, the two halves of the cores each; meanwhile benchmarks/bench_gpu.py on two more;
#   2. fine-tune the bundled lite registration model on both folders for the whole epochs that fit
#      TRAIN_BUDGET_S (benchmarks/device/train_within.py, configs/lite_gpu_finetune.yaml), and at the
#      same time train the 2D segmentation network from scratch on both (examples/train_segmentation.py);
#   3. leave in $OUT: lite_model.pt, segmentation_model.pt, bench_gpu.md, session.log, logs.tar.gz
#      (datasets' dataset.json / split.json and simulate logs, the runs' configs, metrics and logs).
#
# Usage, from the repo root on the device machine (device tool; carry .whl, see below):
#   bash benchmarks/device/gpu_session.sh
# The machine has no package index: .whl holds the wheels it lacks (monai nibabel pydicom trimesh xraydb
# cma sqlalchemy platformdirs greenlet, `pip download` for cp312 manylinux) and .whl/replay a stand-in
# spekpy replaying the real one's spectra (python benchmarks/device/make_spekpy_replay.py --out .whl/replay).
# The same script runs on a CPU for a smoke test with small knobs, e.g.
#   N_LINE=6 N_CLINICAL=6 SIM_WORKERS=1 BENCH_ARGS="--device cpu --sizes lite --repeats 1" TRAIN_BUDGET_S=20 \
#   SEG_STEPS=20 SEG_BUDGET_S=120 PROBE_STEPS=2 NO_WHEELS=1 PY=.venv/bin/python OUT=/tmp/out bash benchmarks/device/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_session_out}
WORK=${WORK:-/tmp/gpu_session}
N_LINE=${N_LINE:-360}
N_CLINICAL=${N_CLINICAL:-260}
SIM_WORKERS=${SIM_WORKERS:-7}
BENCH_BUDGET_S=${BENCH_BUDGET_S:-150}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-200}
SEG_STEPS=${SEG_STEPS:-6000}
SEG_BUDGET_S=${SEG_BUDGET_S:-260}
PROBE_STEPS=${PROBE_STEPS:-40}
INIT=${INIT:-src/biplanar/resources/models/lite/model.pt}  # the model fine-tuned (2026-12-04: the stage-1 lite model)
PY=${PY:-python3}
DEADLINE_S=${DEADLINE_S:-540}  # the whole script, from its start: training budgets shrink to fit
STARTED=$(date +%s)
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/session.log") 2>&1
stamp() { echo "[$(date +%T)] $*"; }

if [ -z "${NO_WHEELS:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD/src:/tmp/site:$PWD/.whl/replay"
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)  # the package's metadata, as an install leaves it
    mkdir -p "/tmp/site/biplanar-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: biplanar\nVersion: %s\n' "$version" >"/tmp/site/biplanar-$version.dist-info/METADATA"
fi
export PYTHONUNBUFFERED=1
stamp "start"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
cores=$(nproc)
pin() { # pin CORES command...: run on those cores when taskset and enough cores are there
    local cores_list=$1
    shift
    if command -v taskset >/dev/null && [ "$cores" -ge 16 ]; then taskset -c "$cores_list" "$@"; else "$@"; fi
}
simulate() { # folder n seed mode cores
    pin "$5" $PY -m biplanar simulate --out "$1" --n "$2" --seed "$3" --preset lite --shapes mixed \
        --geometry mixed --scene body --mode "$4" --workers "$SIM_WORKERS" >"$1.log" 2>&1
}

stamp "simulate $N_LINE line-integral + $N_CLINICAL clinical subjects; bench_gpu meanwhile"
simulate "$WORK/line" "$N_LINE" 3031 line_integral 2-8 &
line_pid=$!
simulate "$WORK/clinical" "$N_CLINICAL" 3032 clinical 9-15 &
clinical_pid=$!
# shellcheck disable=SC2086  # BENCH_ARGS holds several arguments
[ "$BENCH_BUDGET_S" -gt 0 ] && pin 0-1 timeout $((BENCH_BUDGET_S + 90)) $PY benchmarks/bench_gpu.py --budget-s "$BENCH_BUDGET_S" $BENCH_ARGS \
    --out "$OUT/bench_gpu.md" || stamp "bench_gpu failed ($?)"
wait "$line_pid" || stamp "simulate line failed"
wait "$clinical_pid" || stamp "simulate clinical failed"
tail -n 2 "$WORK/line.log" "$WORK/clinical.log"

left=$((DEADLINE_S - ($(date +%s) - STARTED)))
TRAIN_BUDGET_S=$((left - 110 < TRAIN_BUDGET_S ? left - 110 : TRAIN_BUDGET_S))
SEG_BUDGET_S=$((left - 40 < SEG_BUDGET_S ? left - 40 : SEG_BUDGET_S))
stamp "${left} s left: train (budget ${TRAIN_BUDGET_S} s) and segmentation (${SEG_STEPS} steps, at most ${SEG_BUDGET_S} s)"
timeout -s TERM $((TRAIN_BUDGET_S + 90)) $PY benchmarks/device/train_within.py --config configs/lite_gpu_finetune.yaml \
    --data "$WORK/line" "$WORK/clinical" --init "$INIT" \
    --out "$WORK/lite_run" --budget-s "$TRAIN_BUDGET_S" --probe-steps "$PROBE_STEPS" --export "$OUT/lite_model.pt" >"$WORK/lite_run.log" 2>&1 &
train_pid=$!
timeout -s TERM "$SEG_BUDGET_S" $PY examples/train_segmentation.py --data "$WORK/line" "$WORK/clinical" \
    --out "$WORK/seg_run" --steps "$SEG_STEPS" --seed 0 --threads 2 --no-progress \
    --export "$OUT/segmentation_model.pt" >"$WORK/seg_run.log" 2>&1 &
seg_pid=$!
wait "$train_pid" || stamp "train failed or stopped ($?)"
wait "$seg_pid" || stamp "segmentation stopped ($?)"
if [ ! -f "$OUT/segmentation_model.pt" ] && [ -f "$WORK/seg_run/best.pt" ]; then
    $PY -c "import sys; from biplanar.training.segmentation_model import export_segmentation_model as export
export(sys.argv[1], sys.argv[2])" "$WORK/seg_run/best.pt" "$OUT/segmentation_model.pt"
fi
if [ ! -f "$OUT/lite_model.pt" ] && [ -f "$WORK/lite_run/best.pt" ]; then
    $PY -c "import sys; from biplanar.training.checkpoints import export_model; export_model(sys.argv[1], sys.argv[2])" \
        "$WORK/lite_run/best.pt" "$OUT/lite_model.pt"
fi
tail -n 5 "$WORK/lite_run.log" "$WORK/seg_run.log"
(cd "$WORK" && tar czf "$OUT/logs.tar.gz" --exclude='*.pt' --exclude=subjects --exclude=.partial ./*.log line clinical lite_run seg_run 2>/dev/null)
ls -la "$OUT"
stamp "done"
