# robustlens recipes: `just --list` shows them. Install just with `cargo install just`
# or `pip install rust-just`. Arguments are KEY=VALUE in any order (`just saliency
# run=models/robust-eps4 method=ig`). Data comes from `data=PATH` or $ROBUSTLENS_DATA, and is
# the built-in synthetic set otherwise (with --preset quick; a real folder uses --preset paper).

set shell := ["bash", "-euo", "pipefail", "-c"]

# The binary (ROBUSTLENS_BIN overrides, e.g. target/debug/robustlens in CI) and extra flags
# for every training command (ROBUSTLENS_FLAGS, e.g. "--epochs 1 --train-per-class 6").
bin := env_var_or_default("ROBUSTLENS_BIN", "cargo run --release --quiet --")
flags := env_var_or_default("ROBUSTLENS_FLAGS", "")
# Parses KEY=VALUE arguments into shell variables (a bare value goes to `first`), resolves the
# data and its preset, and says which data is used.
kv := '''
first=""; data="${ROBUSTLENS_DATA:-synthetic}"
for a in "$@"; do
  case "$a" in
    *=*) k="${a%%=*}"; v="${a#*=}"
         case "$k" in *[!a-z_]*|"") echo "argument $a: KEY=VALUE with KEY in a-z" >&2; exit 2;; esac
         printf -v "$k" '%s' "$v";;
    *) first="$a";;
  esac
done
if [ "$data" = "synthetic" ]; then preset=quick; else preset=paper; fi
say() { echo "data: $data (point at HAM10000 with data=PATH or ROBUSTLENS_DATA=PATH; the folder holds HAM10000_metadata.csv)" >&2; }
'''

# Show the recipes
default:
    @just --justfile {{quote(justfile())}} --list

# The paper's standard training: just train-standard [data=PATH] [out=DIR]
train-standard *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    say
    {{bin}} train-standard --data "$data" --preset "$preset" --out "${out:-models/standard}" {{flags}}

# Adversarial (PGD L2) training at a paper eps (scaled from 224 px): just train-robust eps=4 (or 4)
train-robust *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    eps="${eps:-${first:-4}}"
    say
    {{bin}} train-robust --data "$data" --preset "$preset" --eps-at-224 "$eps" --out "${out:-models/robust-eps$eps}" {{flags}}

# Fine-tune layer groups of the latest robust run: just finetune groups=3-5 [from=DIR]
finetune *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    groups="${groups:-${first:-3-5}}"
    if [ -z "${from:-}" ]; then from=$(ls -dt models/robust-* 2>/dev/null | head -n1 || true); fi
    if [ -z "$from" ]; then echo "no robust run in models/: run 'just train-robust eps=4' first or pass from=DIR" >&2; exit 1; fi
    {{bin}} finetune --from "$from" --groups "$groups" --out "${out:-models/finetune-$groups}" {{flags}}

# Accuracy and robust accuracy (L2 PGD, eps 3 at 224 scaled to 32 px): just evaluate run=models/robust-eps4
evaluate *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    {{bin}} evaluate --run "${run:-${first:-models/standard}}" --attack pgd --eps "${eps:-0.43}" --steps "${steps:-10}"

# Saliency maps: just saliency [run=models/standard] [image=path.png] [method=gradient,ig] (default: 6 test images of the run)
saliency *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    if [ -n "${image:-}" ]; then src=(--image "$image"); else src=(--data run --count "${count:-6}"); fi
    {{bin}} saliency --run "${run:-${first:-models/standard}}" "${src[@]}" --method "${method:-gradient,ig,smoothgrad,occlusion,gradcam}" --window "${window:-8}" --stride "${stride:-4}" --out "${out:-models/saliency}"

# Saliency metrics with intervals and tests: just compare [runs="models/standard models/robust-eps4"] [method=gradient,ig]
compare *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    r=(); for d in ${runs:-models/standard models/robust-eps4 models/finetune-3-5}; do if [ -d "$d" ]; then r+=(--run "$d"); fi; done
    {{bin}} compare "${r[@]}" --method "${method:-gradient}" --out "${out:-models/compare}"

# Train one model per paper eps, then compare them: just sweep-eps eps=0,2,4,8
sweep-eps *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    say
    {{bin}} sweep-eps --data "$data" --preset "$preset" --eps-at-224 "${eps:-${first:-0,1,2,3,4,5,7,9}}" --out "${out:-models/sweep-eps}" {{flags}}

# The model-randomisation sanity check of a run's maps: just sanity run=models/standard
sanity *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    {{bin}} sanity --run "${run:-${first:-models/standard}}" --method "${method:-gradient}"

# The HTML report for runs: just report [runs="models/standard models/robust-eps4"]
report *args:
    #!/usr/bin/env bash
    set -euo pipefail
    set -- {{args}}
    {{kv}}
    r=(); for d in ${runs:-models/standard models/robust-eps4 models/finetune-3-5}; do if [ -d "$d" ]; then r+=(--run "$d"); fi; done
    {{bin}} report "${r[@]}" --out "${out:-models/report}"

# The whole pipeline on the synthetic set (the README's main command)
demo:
    {{bin}} demo

# Run the test suite (what CI runs)
test:
    cargo test --locked

# Speed: robustlens and, when PyTorch is installed, the same cells in PyTorch, then the ratios
bench:
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p models/bench
    {{bin}} bench --json | tee models/bench/robustlens.jsonl
    if python3 -c "import torch, torchvision" 2>/dev/null; then
        python3 bench/torch_reference.py --json | tee models/bench/torch.jsonl
        python3 bench/torch_reference.py --compare models/bench/robustlens.jsonl models/bench/torch.jsonl
    else
        echo "PyTorch not installed: pip install torch torchvision to measure the reference" >&2
    fi
    {{bin}} data bench --image-size 224 --per-class 100
    {{bin}} data bench --image-size 64 --per-class 200

# The CUDA build, no GPU needed: target/cuda/ and a device run's carry target/cuda-carry/
build-cuda *args:
    tools/build-cuda.sh {{args}}

# On a GPU machine, after build-cuda: parity with the CPU and speed against PyTorch (JSON lines)
gpu-check:
    bench/gpu-check.sh

# Format, lint and test, as before a commit
ci:
    cargo fmt --check
    cargo clippy --all-targets --locked -- -D warnings
    .ci/run

# Regenerate the parity fixtures (needs torch, torchvision, captum, quantus, scikit-image, safetensors, pillow)
fixtures:
    python3 tests/fixtures/make_fixtures.py
    python3 tests/fixtures/make_captum_fixtures.py
    python3 tests/fixtures/make_pgd_fixtures.py
    python3 tests/fixtures/make_adam_fixtures.py
    python3 tests/fixtures/make_metric_fixtures.py
