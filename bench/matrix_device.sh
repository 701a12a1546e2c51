#!/bin/bash
# The issue-15 matrix on the GPU machine, started in the background (setsid) so that it outlives the device call:
#
#   setsid bash bench/matrix_device.sh /root/cifar10 /root/runs resnet50 mobilenet_v2 ... > /root/runs.log 2>&1 &
#
# Per model, all models at once: train on the GPU (bench/matrix.py train), then QAT on the GPU and the CPU
# evaluation (every calibration method, exact/fast graphs, fallback) side by side, each CPU stage limited to
# THREADS threads (measured: one process per model using all 16 cores made the CPU stages 15x slower). Each
# checkpoint is also split into 15 MiB parts (RUNS/parts/) so that it fits the device's 16 MiB file limit on its
# way back (ModelOpt runs on the dev machine: its wheels exceed one call's 64 MiB). RUNS/A.done marks a model
# finished; RUNS/A.*.log hold each stage's output.
set -u
data=${1:?usage: matrix_device.sh DATA_DIR RUNS ARCH...}
runs=${2:?usage: matrix_device.sh DATA_DIR RUNS ARCH...}
shift 2
threads=${THREADS:-2}
qat_epochs=${QAT_EPOCHS:-3}
mkdir -p "$runs/parts"
one_model() {
    local a=$1
    python3 -m bench.matrix train --arch "$a" --out "$runs" --data-dir "$data" > "$runs/$a.train.log" 2>&1 || {
        echo "train failed" > "$runs/$a.done"; return; }
    (cd "$runs/parts" && split -b 15M -d "../$a.pt" "$a.pt.part-")
    OMP_NUM_THREADS=$threads python3 -m bench.matrix qat --arch "$a" --out "$runs" --data-dir "$data" \
        --threads "$threads" --qat-epochs "$qat_epochs" > "$runs/$a.qat.log" 2>&1 &
    OMP_NUM_THREADS=$threads python3 -m bench.matrix evaluate --arch "$a" --out "$runs" --data-dir "$data" \
        --threads "$threads" > "$runs/$a.evaluate.log" 2>&1
    wait
    echo ok > "$runs/$a.done"
}
for a in "$@"; do
    one_model "$a" &
done
wait
echo "all done"
