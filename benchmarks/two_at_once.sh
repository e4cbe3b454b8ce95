#!/usr/bin/env bash
# Two trainings on one machine: one run alone, two at once with the default threads (one per core each),
# and two at once with --threads split between them. Images per second of the second epoch of each run.
#
#   benchmarks/two_at_once.sh ../shared/data/cifar10-jpeg.tar.gz [OUT]
set -euo pipefail
data=$1 out=${2:-/tmp/two-at-once}
cnnlab=${CNNLAB:-cnnlab}
rm -rf "$out"; mkdir -p "$out"
cores=$(nproc)
train() { $cnnlab train --data "$data" --train-subset 10000 --epochs 2 --no-plots --no-progress --runs-dir "$out" "$@"; }
speed() { python3 -c "import json,sys; r=[json.loads(l) for l in open('$out/$1/metrics.jsonl')][-1]; print(round(r['train_images']/r['seconds']))"; }
lscpu | grep -m1 "Model name"; echo "cores: $cores"
train --name alone >/dev/null
echo "one run, $cores threads:            $(speed alone) img/s"
train --name naive-a >/dev/null & train --name naive-b >/dev/null & wait
a=$(speed naive-a) b=$(speed naive-b); echo "two at once, $cores threads each:   $a + $b = $((a + b)) img/s"
half=$((cores / 2 > 0 ? cores / 2 : 1))
train --name split-a --threads $half >/dev/null & train --name split-b --threads $half >/dev/null & wait
a=$(speed split-a) b=$(speed split-b); echo "two at once, --threads $half each:   $a + $b = $((a + b)) img/s"
