#!/usr/bin/env bash
# robustlens and PyTorch side by side, per architecture, in alternating rounds: each round
# runs `robustlens bench --arch A` then `bench/torch_reference.py --arch A` on the same cells;
# the table gives per cell the median images/s of each over the rounds, the median of the
# per-round ratios and their range, and both programs' peak resident memory.
#
#   bench/arch_rounds.sh ARCHS ROUNDS [bench flags, e.g. --sizes 64 --iters 3]
#   bench/arch_rounds.sh convnext_atto,efficientnet_b0,vit_tiny_patch16_224 3 --sizes 64
#
# Needs python3 with torch, torchvision and timm (PYTHON selects the interpreter) and the
# release binary (ROBUSTLENS, default target/release/robustlens). Threads: THREADS (default 2)
# for both.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0"
    exit 2
fi
archs=$1 rounds=$2
shift 2
bin=${ROBUSTLENS:-target/release/robustlens}
py=${PYTHON:-python3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$rounds"); do
    for a in ${archs//,/ }; do
        RAYON_NUM_THREADS=$threads "$bin" bench --arch "$a" --json "$@" 2>/dev/null \
            | sed "s/^{/{\"round\":$r,\"who\":\"robustlens\",/" >>"$tmp/all.jsonl"
        "$py" "$here/torch_reference.py" --arch "$a" --threads "$threads" --json "$@" 2>/dev/null \
            | sed "s/^{/{\"round\": $r, \"who\": \"torch\", /" >>"$tmp/all.jsonl"
    done
done
"$py" - "$tmp/all.jsonl" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(dict)
rss = defaultdict(dict)
for line in open(sys.argv[1]):
    d = json.loads(line)
    key = (d["arch"], d["what"], d["size"])
    runs[key].setdefault(d["who"], {})[d["round"]] = d["img_per_s"]
    rss[key][d["who"]] = max(rss[key].get(d["who"], 0), d.get("peak_rss_mb", 0))
print("| arch | cell | robustlens img/s | PyTorch img/s | ratio (median, range) | peak RSS MB (robustlens / PyTorch) |")
print("|---|---|---|---|---|---|")
for key, who in runs.items():
    ours, ref = who.get("robustlens", {}), who.get("torch", {})
    common = sorted(set(ours) & set(ref))
    if not common:
        continue
    ratios = [ours[r] / ref[r] for r in common]
    print(f"| {key[0]} | {key[1]} @{key[2]} | {statistics.median(ours.values()):.2f} | "
          f"{statistics.median(ref.values()):.2f} | {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] | {rss[key].get('robustlens', 0):.0f} / "
          f"{rss[key].get('torch', 0):.0f} |")
PY
