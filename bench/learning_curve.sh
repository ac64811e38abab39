#!/usr/bin/env bash
# One point of a learning curve: trains a model on a built-in set and prints its validation
# accuracy after every epoch and its test accuracy (docs/learning_curves.md lists the runs).
#
#   bench/learning_curve.sh DATA SIZE TRAIN_PER_CLASS EPOCHS OUT [more train flags]
#   bench/learning_curve.sh synthetic:blocks 64 200 8 lc/b64 --no-augment
#   bench/learning_curve.sh synthetic:blocks 64 200 8 lc/r64 --robust --eps-at-224 8 --attack-steps 3
#
# Every run: random start, no head phase, Adam lr 1e-3 x0.1 after 3/4 of the epochs, batch 16,
# 50 validation and 50 test images per class, seed 0. ROBUSTLENS selects the binary
# (default: target/release/robustlens).
set -euo pipefail
if [ $# -lt 5 ]; then
    sed -n '2,12p' "$0"
    exit 2
fi
data=$1 size=$2 n=$3 epochs=$4 out=$5
shift 5
bin=${ROBUSTLENS:-target/release/robustlens}
cmd=train-standard
extra=()
for a in "$@"; do
    if [ "$a" = "--robust" ]; then cmd=train-robust; else extra+=("$a"); fi
done
start=$(date +%s)
"$bin" "$cmd" --data "$data" --image-size "$size" --train-per-class "$n" \
    --val-per-class 50 --test-per-class 50 --epochs "$epochs" --head-epochs 0 \
    --schedule "step:$((epochs * 3 / 4)):0.1" --out "$out" "${extra[@]}" >"$out.log" 2>&1
end=$(date +%s)
python3 - "$out" $((end - start)) <<'PY'
import json, sys
d, wall = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl") if l.strip()]
test = json.load(open(f"{d}/summary.json"))["test"]["accuracy"]
val = " ".join(f"{r['val_acc']:.2f}" for r in rows if r["phase"] == "full")
print(f"{d}: {wall} s, test {test:.3f}, validation per epoch: {val}")
PY
