#!/usr/bin/env bash
# robustlens and PyTorch side by side, per architecture, in alternating rounds (the release
# binary against bench/torch_reference.py; bench/rounds.sh runs them and prints the table:
# median images/s, the median and range of the per-round ratios, peak resident memory).
#
#   bench/arch_rounds.sh ARCHS ROUNDS [bench flags, e.g. --sizes 64 --iters 3]
#   bench/arch_rounds.sh convnext_atto,efficientnet_b0,vit_tiny_patch16_224 3 --sizes 64
#
# Needs python3 with torch, torchvision and timm (PYTHON selects the interpreter) and the
# release binary (ROBUSTLENS, default target/release/robustlens). Threads: THREADS (default 2)
# for both.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,11p' "$0"
    exit 2
fi
archs=$1
shift
ARCHS=$archs BINS="robustlens=${ROBUSTLENS:-target/release/robustlens}" \
    exec "$(dirname "$0")/rounds.sh" "$@"
