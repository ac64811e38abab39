#!/usr/bin/env bash
# Builds a CUDA robustlens on a machine without a GPU or a CUDA install, for an H100/H200
# (compute capability 9.0, `sm_90a`) with an NVIDIA driver >= 580 (CUDA 13.0).
#
#   tools/build-cuda.sh                      # --features cudnn, stripped: target/cuda/robustlens,
#                                            # and what a device run carries: target/cuda-carry/
#                                            # (the binary and libcurand, xz-compressed)
#   tools/build-cuda.sh --features cuda      # candle's CUDA backend only (no cuDNN)
#   CUDA_CHECK=1 tools/build-cuda.sh         # `cargo check --all-targets` only
#   CUDA_CHECK=clippy tools/build-cuda.sh    # `cargo clippy --all-targets -- -D warnings`
#
# The toolkit, cuBLAS, cuRAND and cuDNN come from PyPI wheels in `.cuda-env/` (git-ignored);
# `libcuda` is a stub compiled here for linking only: never copy it to a GPU machine.
# The binary is built without debug info, with fat LTO in one codegen unit, and stripped
# (22 MiB; without LTO 64 MiB, 33 MB of it candle's MoE and GGUF kernels, which robustlens
# never calls and LTO drops), then compressed (about 5 MB) for a device run, whose
# carry holds 64 MiB with the working tree; the libraries it needs at run time are listed. On a GPU machine with
# PyTorch for CUDA 13 they are in PyTorch's pip packages: see bench/gpu-check.sh.
# First run about 10 minutes on 2 cores (1.5 GB of wheels); later builds are incremental.
set -euo pipefail
ENV_DIR=${CUDA_ENV_DIR:-$PWD/.cuda-env}          # venv + link dir (keep out of git)
PY=${PYTHON:-python3}
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--features cudnn)

# 1. CUDA 13.0 toolkit and cuDNN 9 from PyPI (pin 13.0.x: driver 580 JITs PTX ISA <= 9.0 only)
if [ ! -x "$ENV_DIR/venv/bin/pip" ]; then
  "$PY" -m venv "$ENV_DIR/venv"
fi
"$ENV_DIR/venv/bin/pip" install -q \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 \
  nvidia-cudnn-cu13==9.28.1.4
NV=$("$ENV_DIR/venv/bin/python" -c 'import nvidia,os;print(nvidia.__path__[0])')
CU13=$NV/cu13
CUDNN=$NV/cudnn

# 2. Link dir: unversioned .so names and a stub libcuda.so (SONAME libcuda.so.1)
LINK=$ENV_DIR/cuda-link
mkdir -p "$LINK/lib/stubs"
for l in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "$CU13/lib/lib$l" "$LINK/lib/lib${l%%.so.*}.so"
done
ln -sf "$CUDNN/lib/libcudnn.so.9" "$LINK/lib/libcudnn.so"
if [ ! -f "$LINK/lib/stubs/libcuda.so" ]; then
  CUDARC_SRC=$(cargo metadata --all-features --format-version 1 --manifest-path "${MANIFEST:-Cargo.toml}" \
    | "$ENV_DIR/venv/bin/python" -c 'import json,sys;print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
  CUDARC_SRC=$(dirname "$CUDARC_SRC")
  grep -ohE '^\s+fn cu[A-Za-z0-9_]*\(' "$CUDARC_SRC/src/driver/sys/mod.rs" \
    | sed -E 's/^\s+fn ([A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk '{print "int " $1 "(void){return 100;}"}' > "$LINK/libcuda_stub.c"   # 100 = CUDA_ERROR_NO_DEVICE
  cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$LINK/lib/stubs/libcuda.so" "$LINK/libcuda_stub.c"
fi

# 3. Build (its own target folder, so the CPU build stays as it is)
export PATH=$CU13/bin:$PATH          # cudarc runs `nvcc --version` from PATH
export NVCC=$CU13/bin/nvcc           # cudaforge (candle-kernels)
export CUDARC_CUDA_VERSION=13000     # pin cudarc's API level to 13.0
export CUDA_COMPUTE_CAP=90           # no nvidia-smi here; becomes sm_90a
export CUDA_ROOT=$LINK               # cudarc link search: $CUDA_ROOT/lib, lib/stubs
export CUDAFORGE_THREADS=$(nproc)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cuda-build}
case "${CUDA_CHECK:-0}" in
  1) exec cargo check --locked --all-targets "${args[@]}" ;;
  clippy) exec cargo clippy --locked --all-targets "${args[@]}" -- -D warnings ;;
esac
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  cargo build --locked --release --bin robustlens "${args[@]}"
mkdir -p target/cuda target/cuda-carry
strip -o target/cuda/robustlens.tmp "$CARGO_TARGET_DIR/release/robustlens"
mv target/cuda/robustlens.tmp target/cuda/robustlens
# What a device run carries (the 64 MiB it may carry include the working tree):
# the binary, xz-compressed; bench/gpu-check.sh unpacks it (with Python's lzma).
xz -T0 -6 -c target/cuda/robustlens > target/cuda-carry/robustlens.xz.tmp
mv target/cuda-carry/robustlens.xz.tmp target/cuda-carry/robustlens.xz
# cuRAND (candle opens a generator on every CUDA device) is not among PyTorch's pip packages:
# carried too, compressed (about 43 MB; the binary and the working tree bring the carry to
# about 55 MiB). bench/gpu-check.sh uses it only where no libcurand.so.10 is found.
if [ ! -f target/cuda-carry/libcurand.so.10.xz ]; then
  xz -T0 -6 -c "$CU13/lib/libcurand.so.10" > target/cuda-carry/libcurand.so.10.xz.tmp
  mv target/cuda-carry/libcurand.so.10.xz.tmp target/cuda-carry/libcurand.so.10.xz
fi
size=$(stat -c %s target/cuda/robustlens)
packed=$(stat -c %s target/cuda-carry/robustlens.xz)
echo "target/cuda/robustlens: $((size / 1048576)) MiB ($size bytes), stripped"
echo "target/cuda-carry/robustlens.xz: $((packed / 1048576)) MiB ($packed bytes), to carry"
echo "target/cuda-carry/: $(du -sm target/cuda-carry | cut -f1) MiB in all (with cuRAND)"
if [ "$size" -ge $((64 << 20)) ]; then
  echo "the stripped binary is 64 MiB or more" >&2
  exit 1
fi
echo "run-time libraries (NEEDED):"
readelf -d target/cuda/robustlens | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
