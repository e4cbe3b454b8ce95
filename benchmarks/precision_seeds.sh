#!/usr/bin/env bash
# bf16 must not silently cost accuracy: fp32 and bf16 (both channels-last) on the real data, same
# shortened schedule (cosine over EPOCHS epochs), seeds 0-2. Accuracy only: the runs go two at a
# time, one thread each, so their times are not throughput figures (see `cnnlab bench` for those).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
EPOCHS=${EPOCHS:-5}
RUNS=${RUNS:-runs/precision}
for seed in 0 1 2; do
  for precision in fp32 bf16; do
    OMP_NUM_THREADS=1 cnnlab train --data "$DATA" --epochs "$EPOCHS" --seed "$seed" --precision "$precision" \
      --runs-dir "$RUNS" --name "$precision-e$EPOCHS-s$seed" --no-progress &
  done
  wait
done
python benchmarks/summarize_runs.py "$RUNS" "fp32-e$EPOCHS" "bf16-e$EPOCHS"
