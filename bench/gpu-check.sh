#!/usr/bin/env bash
# The device check of a CUDA build, run from the crate root on a GPU machine that has the
# NVIDIA driver and PyTorch for CUDA 13, and needs no network, no Rust and no weights:
#
#   tools/build-cuda.sh                      # here: target/cuda-carry/robustlens.xz
#   bench/gpu-check.sh [BINARY] > gpu.jsonl  # there (carry target/cuda-carry)
#
# BINARY defaults to target/cuda/robustlens, unpacked from target/cuda-carry/robustlens.xz
# when it is not there.
#
# Prints JSON lines, each with a "check" field:
#   gpu       the device (nvidia-smi);
#   ldd       the binary's libraries, where each was found, and any missing;
#   parity    `robustlens device-check`: the model on the GPU against the CPU (logits, input
#             gradients, a PGD-7 attack, one training step), relative difference <= 1e-4;
#   bench     `robustlens bench --device cuda`, and `torch`: bench/torch_reference.py
#             --device cuda (cuDNN, benchmark mode, TF32 off), for eval, train, input-grad,
#             pgd7 and ig at 224 px, batch 16 and 64;
#   ratio     robustlens / PyTorch images per second, per cell.
# A step that fails prints {"check": ..., "error": ...} and the script goes on. Each step has a
# time limit (STEP_S, default 55 s; a timed-out bench keeps the cells it printed): at most
# eight steps, so the whole stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/cuda/robustlens}
PY=${PYTHON:-python3}
ITERS=${ITERS:-5}
STEP_S=${STEP_S:-55}
# a rehearsal elsewhere: DEVICE=cpu SIZE=32 BATCHES=4 PARITY=32:2 ITERS=1 bench/gpu-check.sh BIN
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-224}
BATCHES=${BATCHES:-16 64}
PARITY=${PARITY:-64:8 224:4}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# The run-time libraries (CUDA 13 runtime, cuBLAS, cuDNN 9; cuRAND where installed) from
# PyTorch's pip packages: nvidia/cu13/lib and nvidia/cudnn/lib. PyTorch has no cuRAND: the
# carried copy is unpacked below where no other is found.
LIBS=$("$PY" - <<'EOF' 2>/dev/null
import os
import nvidia
dirs = []
for root in nvidia.__path__:
    for sub in ("cu13/lib", "cudnn/lib", "cublas/lib", "curand/lib", "cuda_runtime/lib",
                "cuda_nvrtc/lib"):
        d = os.path.join(root, sub)
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
EOF
)
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
[ -d /usr/local/cuda/lib64 ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:/usr/local/cuda/lib64

unxz_to() { # FILE.xz DEST: unpacks with Python's lzma (no xz tool needed)
  "$PY" -c 'import lzma,shutil,sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g:
    shutil.copyfileobj(f, g)' "$1" "$2.tmp" && mv "$2.tmp" "$2"
}

error() { # check, message
  "$PY" -c 'import json,sys; print(json.dumps({"check": sys.argv[1], "error": sys.argv[2]}))' "$1" "$2"
}

# 1. the device
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | "$PY" -c 'import json,sys
for l in sys.stdin:
    n, d, m = [x.strip() for x in l.split(",")]
    print(json.dumps({"check": "gpu", "name": n, "driver": d, "memory": m}))'
else
  error gpu "nvidia-smi not found"
fi

# 2. the binary and its libraries
if [ ! -x "$BIN" ] && [ -f target/cuda-carry/robustlens.xz ] && [ $# -eq 0 ]; then
  mkdir -p target/cuda
  unxz_to target/cuda-carry/robustlens.xz "$BIN" && chmod +x "$BIN"
fi
if [ ! -x "$BIN" ]; then
  error ldd "$BIN not found: build it with tools/build-cuda.sh and carry target/cuda-carry"
  exit 1
fi
if ldd "$BIN" | grep -q 'libcurand.so.10 => not found' && [ -f target/cuda-carry/libcurand.so.10.xz ]; then
  mkdir -p target/cuda/lib
  unxz_to target/cuda-carry/libcurand.so.10.xz target/cuda/lib/libcurand.so.10
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$PWD/target/cuda/lib
fi
ldd "$BIN" | "$PY" -c 'import json,re,sys
libs, missing = {}, []
for l in sys.stdin:
    m = re.match(r"\s*(\S+) => (.*?)( \(0x[0-9a-f]+\))?$", l)
    if m:
        if m.group(2) == "not found":
            missing.append(m.group(1))
        else:
            libs[m.group(1)] = m.group(2)
print(json.dumps({"check": "ldd", "libs": libs, "missing": missing}))'

step() { # name, command...
  local name=$1
  shift
  if ! timeout "$STEP_S" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    error "$name" "$(tail -c 600 "$OUT/$name.err")"
  fi
}

# 3. parity with the CPU (SIZE:BATCH pairs)
for cfg in $PARITY; do
  size=${cfg%%:*}
  step "parity-$size" "$BIN" device-check --device "$DEVICE" --image-size "$size" \
    --batch-size "${cfg#*:}"
  sed 's/^{"check":/{"check":"parity","item":/' "$OUT/parity-$size.out"
  if grep -q '"pass":false' "$OUT/parity-$size.out" || [ ! -s "$OUT/parity-$size.out" ]; then
    # where is the fault: the same check with candle's CUDA convolutions instead of cuDNN's
    ROBUSTLENS_CUDNN=0 step "parity-$size-candle-conv" "$BIN" device-check --device "$DEVICE" \
      --image-size "$size" --batch-size "${cfg#*:}"
    sed 's/^{"check":/{"check":"parity-candle-conv","item":/' "$OUT/parity-$size-candle-conv.out"
  fi
done

# 4. speed, robustlens then PyTorch, per batch size
for b in $BATCHES; do
  step "bench-$b" "$BIN" bench --device "$DEVICE" --sizes "$SIZE" --batch-size "$b" \
    --iters "$ITERS" --json
  sed 's/^{/{"check":"bench",/' "$OUT/bench-$b.out"
  step "torch-$b" "$PY" bench/torch_reference.py --device "$DEVICE" --sizes "$SIZE" \
    --batch-size "$b" --iters "$ITERS" --json
  sed 's/^{/{"check":"torch",/' "$OUT/torch-$b.out"
done

# 5. ratios, per batch size (ig always runs one image)
for b in $BATCHES; do
  "$PY" - "$OUT/bench-$b.out" "$OUT/torch-$b.out" "$b" <<'EOF'
import json
import sys


def load(path):
    try:
        with open(path) as f:
            return {r["what"]: r for r in (json.loads(l) for l in f if l.startswith("{"))}
    except OSError:
        return {}


ours, ref = load(sys.argv[1]), load(sys.argv[2])
for what, r in ours.items():
    if what in ref:
        print(json.dumps({"check": "ratio", "what": what, "size": r["size"],
                          "batch": int(sys.argv[3]), "robustlens": round(r["img_per_s"], 3),
                          "torch": round(ref[what]["img_per_s"], 3),
                          "ratio": round(r["img_per_s"] / ref[what]["img_per_s"], 3)}))
EOF
done
