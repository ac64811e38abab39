# robustlens recipes: `just --list` shows them. Install just with `cargo install just`
# or `pip install rust-just`. Data comes from `data=PATH` or $ROBUSTLENS_DATA, and is the
# built-in synthetic set otherwise (with --preset quick; a real folder uses --preset paper).

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := "cargo run --release --quiet --"

# Show the recipes
default:
    @just --list

_data data:
    #!/usr/bin/env bash
    d="{{trim_start_match(data, "data=")}}"
    if [ -z "$d" ]; then d="${ROBUSTLENS_DATA:-synthetic}"; fi
    echo "$d"

_preset data:
    #!/usr/bin/env bash
    d="{{trim_start_match(data, "data=")}}"
    if [ -z "$d" ]; then d="${ROBUSTLENS_DATA:-synthetic}"; fi
    if [ "$d" = "synthetic" ]; then echo quick; else echo paper; fi

_say data:
    #!/usr/bin/env bash
    d="{{trim_start_match(data, "data=")}}"
    if [ -z "$d" ]; then d="${ROBUSTLENS_DATA:-synthetic}"; fi
    echo "data: $d (point at HAM10000 with data=PATH or ROBUSTLENS_DATA=PATH; the folder holds HAM10000_metadata.csv)" >&2

# The paper's standard training: just train-standard [data=PATH] [out=DIR]
train-standard data='' out='':
    @just _say "{{data}}"
    {{bin}} train-standard --data "$(just _data '{{data}}')" --preset "$(just _preset '{{data}}')" --out "{{ if trim_start_match(out, "out=") == "" { "models/standard" } else { trim_start_match(out, "out=") } }}"

# Adversarial (PGD L2) training at a paper eps (scaled from 224 px): just train-robust eps=4
train-robust eps='4' data='' out='':
    @just _say "{{data}}"
    {{bin}} train-robust --data "$(just _data '{{data}}')" --preset "$(just _preset '{{data}}')" --eps-at-224 {{trim_start_match(eps, "eps=")}} --out "{{ if trim_start_match(out, "out=") == "" { "models/robust-eps" + trim_start_match(eps, "eps=") } else { trim_start_match(out, "out=") } }}"

# Fine-tune layer groups of the latest robust run: just finetune groups=3-5 [from=DIR]
finetune groups='3-5' from='' out='':
    #!/usr/bin/env bash
    set -euo pipefail
    from="{{trim_start_match(from, "from=")}}"
    if [ -z "$from" ]; then from=$(ls -dt models/robust-* 2>/dev/null | head -n1 || true); fi
    if [ -z "$from" ]; then echo "no robust run in models/: run 'just train-robust eps=4' first or pass from=DIR" >&2; exit 1; fi
    g="{{trim_start_match(groups, "groups=")}}"
    out="{{trim_start_match(out, "out=")}}"
    if [ -z "$out" ]; then out="models/finetune-$g"; fi
    {{bin}} finetune --from "$from" --groups "$g" --out "$out"

# Accuracy (and robust accuracy) of a run: just evaluate run=models/robust-eps4
evaluate run='models/standard':
    {{bin}} evaluate --run {{trim_start_match(run, "run=")}} --attack pgd --eps 0.43 --steps 10

# Saliency maps of test images: just saliency run=models/standard image=path.png
saliency run='models/standard' image='' method='gradient,ig,smoothgrad,occlusion,gradcam':
    {{bin}} saliency --run {{trim_start_match(run, "run=")}} --image {{trim_start_match(image, "image=")}} --image-size 32 --method {{trim_start_match(method, "method=")}} --window 8 --stride 4 --out models/saliency

# Compare models in one report: just compare (standard, robust, fine-tuned)
compare:
    {{bin}} report --run standard=models/standard --run robust=models/robust-eps4 --run "ft=models/finetune-3-5" --out models/compare

# Report for any runs: just report runs="models/standard models/robust-eps4"
report runs='models/standard':
    {{bin}} report $(for r in {{runs}}; do echo --run "$r"; done) --out models/report

# The whole pipeline on the synthetic set (the README's main command)
demo:
    {{bin}} demo

# Run the test suite (what CI runs)
test:
    cargo test --locked

# Loader throughput benchmark at 224 and 64 px
bench:
    {{bin}} data bench --image-size 224 --per-class 100
    {{bin}} data bench --image-size 64 --per-class 200

# Format, lint and test, as before a commit
ci:
    cargo fmt --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked

# Regenerate the parity fixtures (needs torch, torchvision, captum, safetensors, pillow)
fixtures:
    python3 tests/fixtures/make_fixtures.py
    python3 tests/fixtures/make_captum_fixtures.py
    python3 tests/fixtures/make_pgd_fixtures.py
    python3 tests/fixtures/make_adam_fixtures.py
