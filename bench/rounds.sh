#!/usr/bin/env bash
# ResNet-18 (or --arch A) cells of one or more robustlens builds and of PyTorch, in
# alternating rounds: each round runs every build's `bench`, then `bench/torch_reference.py`,
# on the same cells. The table gives per cell the median images/s of each over the rounds
# and, per build, the median and range of its per-round ratio to PyTorch and to the first
# build.
#
#   bench/rounds.sh ROUNDS [bench flags, e.g. --sizes 64 --iters 5]
#   BINS="before=/path/to/old/robustlens now=target/release/robustlens" bench/rounds.sh 5 --sizes 64
#
# BINS: LABEL=PATH pairs (default: now=target/release/robustlens). Needs python3 with torch
# and torchvision (PYTHON selects the interpreter). Threads: THREADS (default 2) for all.
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,13p' "$0"
    exit 2
fi
rounds=$1
shift
bins=${BINS:-now=target/release/robustlens}
py=${PYTHON:-python3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$rounds"); do
    for pair in $bins; do
        label=${pair%%=*} bin=${pair#*=}
        RAYON_NUM_THREADS=$threads "$bin" bench --json "$@" 2>/dev/null \
            | sed "s/^{/{\"round\":$r,\"who\":\"$label\",/" >>"$tmp/all.jsonl"
    done
    "$py" "$here/torch_reference.py" --threads "$threads" --json "$@" 2>/dev/null \
        | sed "s/^{/{\"round\": $r, \"who\": \"PyTorch\", /" >>"$tmp/all.jsonl"
done
"$py" - "$tmp/all.jsonl" "$bins" <<'PY'
import json, statistics, sys
from collections import defaultdict
labels = [p.split("=", 1)[0] for p in sys.argv[2].split()]
runs = defaultdict(lambda: defaultdict(dict))
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs[(d["arch"], d["size"], d["what"])][d["who"]][d["round"]] = d["img_per_s"]
def ratio(cell, a, b):
    common = sorted(set(cell[a]) & set(cell[b]))
    if not common:
        return "-"
    x = [cell[a][r] / cell[b][r] for r in common]
    return f"{statistics.median(x):.2f} [{min(x):.2f}-{max(x):.2f}]"
cols = labels + ["PyTorch"]
head = ["arch", "cell", "size"] + [f"{c} img/s" for c in cols]
head += [f"{l} / PyTorch" for l in labels] + [f"{l} / {labels[0]}" for l in labels[1:]]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for (arch, size, what), cell in runs.items():
    row = [arch, what, str(size)]
    row += [f"{statistics.median(cell[c].values()):.3g}" if cell[c] else "-" for c in cols]
    row += [ratio(cell, l, "PyTorch") for l in labels]
    row += [ratio(cell, l, labels[0]) for l in labels[1:]]
    print("| " + " | ".join(row) + " |")
PY
