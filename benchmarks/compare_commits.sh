#!/usr/bin/env bash
# Two commits side by side in one run, one after the other, nothing else running: the seed recipe's
# accuracy and wall time, and `cnnlab bench`'s default path, interleaved (BENCHMARKS.md, issue 19).
#
#   benchmarks/compare_commits.sh OLD NEW ../shared/data/cifar10-jpeg.tar.gz [EPOCHS] [REPEATS]
#
# Each commit is checked out into its own worktree and imported from there (PYTHONPATH) with this
# checkout's virtual environment; results go to $OUT (default /tmp/compare-commits).
set -euo pipefail
old=$1 new=$2 data=$(realpath "$3") epochs=${4:-30} repeats=${5:-3}
root=$(git rev-parse --show-toplevel)
out=${OUT:-/tmp/compare-commits}
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"
for c in "$old" "$new"; do
    [ -d "$out/tree-$c" ] || git -C "$root" worktree add --detach "$out/tree-$c" "$c" >/dev/null
    PYTHONPATH="$out/tree-$c/src" "$python" -c "import cnnlab, sys; assert '$out/tree-$c' in cnnlab.__file__, cnnlab.__file__"
done
lscpu | grep -m1 "Model name" | tee "$out/cpu.txt"
for r in $(seq 1 "$repeats"); do  # bench: interleaved single repeats, old then new
    for c in "$old" "$new"; do
        PYTHONPATH="$out/tree-$c/src" "$python" -m cnnlab bench --data "$data" --variants cnnlab --repeats 1 \
            --json "$out/bench-$c-$r.json" | grep -E "^cnnlab " | sed "s/^/$c repeat $r: /"
    done
done
for c in "$old" "$new"; do  # the seed recipe, one after the other
    rm -rf "$out/runs-$c"
    PYTHONPATH="$out/tree-$c/src" /usr/bin/time -v "$python" -m cnnlab train --data "$data" --epochs "$epochs" \
        --runs-dir "$out/runs-$c" --name seed --no-progress 2> "$out/time-$c.txt"
    grep -E "Elapsed|Maximum resident" "$out/time-$c.txt" | sed "s/^/$c /"
    "$python" -c "import json,sys; s=json.load(open('$out/runs-$c/seed/summary.json')); print('$c', 'final test acc', s['final_test_acc'], 'train seconds', round(s['train_seconds'], 1))"
done
