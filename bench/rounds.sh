#!/usr/bin/env bash
# One or more robustlens builds and PyTorch side by side, in alternating rounds: each round
# runs, per architecture, every build's `bench --arch A`, then `bench/torch_reference.py
# --arch A`, on the same cells. The table gives per cell the median images/s of each over
# the rounds; per build the median and range of its per-round ratio to PyTorch and to the
# first build; and every program's peak resident memory.
#
#   bench/rounds.sh ROUNDS [bench flags, e.g. --sizes 64 --iters 5]
#   BINS="before=/path/to/old/robustlens now=target/release/robustlens" bench/rounds.sh 5 --sizes 64
#   ARCHS=convnext_atto,vit_tiny_patch16_224 bench/rounds.sh 3 --sizes 64 --iters 3
#
# BINS: LABEL=PATH pairs (default: now=target/release/robustlens). ARCHS: comma-separated
# (default resnet18). Needs python3 with torch and torchvision, and timm for ConvNeXt and ViT
# (PYTHON selects the interpreter). Threads: THREADS (default 2) for all.
#
# ISA=avx2: an AVX2-only CPU on an AVX-512 one. Every program runs without AVX-512: robustlens
# with ROBUSTLENS_AVX512=0 (give it a build without gemm's AVX-512 kernels: cargo build
# --release --no-default-features), PyTorch with ATEN_CPU_CAPABILITY=avx2,
# ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2, and glibc's string functions of
# both with its AVX-512 ones hidden (GLIBC_TUNABLES). The table's last lines give each
# program's instruction sets as it reported them.
set -euo pipefail
if [ $# -lt 1 ]; then
    sed -n '2,21p' "$0"
    exit 2
fi
rounds=$1
shift
bins=${BINS:-now=target/release/robustlens}
archs=${ARCHS:-resnet18}
py=${PYTHON:-python3}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)
ours_env=() torch_env=()
case ${ISA:-} in
    "") ;;
    avx2)
        glibc=GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD
        ours_env=("$glibc" ROBUSTLENS_AVX512=0)
        torch_env=("$glibc" ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2)
        ;;
    *)
        echo "ISA=$ISA: only avx2 (or unset, for the CPU's own instruction sets)" >&2
        exit 2
        ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$rounds"); do
    for a in ${archs//,/ }; do
        for pair in $bins; do
            label=${pair%%=*} bin=${pair#*=}
            env "${ours_env[@]}" RAYON_NUM_THREADS="$threads" "$bin" bench --arch "$a" --json "$@" 2>/dev/null \
                | sed "s/^{/{\"round\":$r,\"who\":\"$label\",/" >>"$tmp/all.jsonl"
        done
        env "${torch_env[@]}" "$py" "$here/torch_reference.py" --arch "$a" --threads "$threads" --json "$@" 2>/dev/null \
            | sed "s/^{/{\"round\": $r, \"who\": \"PyTorch\", /" >>"$tmp/all.jsonl"
    done
done
"$py" - "$tmp/all.jsonl" "$bins" <<'PY'
import json, statistics, sys
from collections import defaultdict
labels = [p.split("=", 1)[0] for p in sys.argv[2].split()]
runs = defaultdict(lambda: defaultdict(dict))
rss = defaultdict(lambda: defaultdict(float))
isas = defaultdict(set)
for line in open(sys.argv[1]):
    d = json.loads(line)
    isas[d["who"]].add(d.get("isa", "?"))
    key = (d["arch"], d["size"], d["what"])
    runs[key][d["who"]][d["round"]] = d["img_per_s"]
    rss[key][d["who"]] = max(rss[key][d["who"]], d.get("peak_rss_mb", 0))
def ratio(cell, a, b):
    common = sorted(set(cell[a]) & set(cell[b]))
    if not common:
        return "-"
    x = [cell[a][r] / cell[b][r] for r in common]
    return f"{statistics.median(x):.2f} [{min(x):.2f}-{max(x):.2f}]"
cols = labels + ["PyTorch"]
head = ["arch", "cell", "size"] + [f"{c} img/s" for c in cols]
head += [f"{l} / PyTorch" for l in labels] + [f"{l} / {labels[0]}" for l in labels[1:]]
head += ["peak RSS MB (" + " / ".join(cols) + ")"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for key, cell in runs.items():
    row = [key[0], key[2], str(key[1])]
    row += [f"{statistics.median(cell[c].values()):.3g}" if cell[c] else "-" for c in cols]
    row += [ratio(cell, l, "PyTorch") for l in labels]
    row += [ratio(cell, l, labels[0]) for l in labels[1:]]
    row += [" / ".join(f"{rss[key][c]:.0f}" for c in cols)]
    print("| " + " | ".join(row) + " |")
print()
for who in labels + ["PyTorch"]:
    print(f"- {who}: {'; '.join(sorted(isas[who])) or '-'}")
PY
