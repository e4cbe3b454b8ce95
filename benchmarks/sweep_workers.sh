#!/usr/bin/env bash
# How a sweep should share this machine, measured end to end: the same four short trials (the seed recipe
# on 10,000 training images for 2 epochs, seeds 0-3) run as
#   1. one worker with all the cores' threads      (cnnlab sweep --workers 1)
#   2. one worker per core, one thread each         (cnnlab sweep --workers auto)
#   3. the naive way: two sweeps of two trials started at once, each trial with a thread per core
# Printed: each way's wall time and the images per second it trained in all (training images / wall).
# Repeat it (PASSES) for the spread. Nothing else may run meanwhile.
#
#   benchmarks/sweep_workers.sh ../shared/data/cifar10-jpeg.tar.gz [OUT] [PASSES]
set -euo pipefail
data=$1 out=${2:-/tmp/sweep-workers} passes=${3:-2}
cnnlab=${CNNLAB:-cnnlab}
lscpu | grep -m1 "Model name"; grep -m2 "cpu family\|^model" /proc/cpuinfo | tr '\n' ' '; echo "cores: $(nproc)"
images=$((4 * 10000 * 2))
sweep() { $cnnlab sweep --data "$data" --train-subset 10000 --epochs 2 --no-progress --out "$@" >/dev/null; }
timed() { local start=$SECONDS; "$@"; echo $((SECONDS - start)); }
for pass in $(seq "$passes"); do
  rm -rf "$out"; mkdir -p "$out"
  one=$(timed sweep "$out/one" --seeds 4 --workers 1)
  auto=$(timed sweep "$out/auto" --seeds 4 --workers auto)
  naive() { sweep "$out/naive-a" --seeds 2 --workers 1 & sweep "$out/naive-b" --seeds 2 --workers 1 & wait; }
  both=$(timed naive)
  for way in "one worker, all threads:$one" "one worker per core:$auto" "two sweeps at once (naive):$both"; do
    name=${way%:*} wall=${way##*:}
    echo "pass $pass  $name  ${wall} s  $((images / wall)) img/s in all"
  done
done
