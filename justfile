# robustlens recipes. `just --list` shows them; install just with `cargo install just`
# or `pip install rust-just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Show the recipes
default:
    @just --list

# Run the test suite (what CI runs)
test:
    cargo test --locked

# Format, lint and test, as before a commit
ci:
    cargo fmt --check
    cargo clippy --all-targets --locked -- -D warnings
    cargo test --locked

# Classify images: just predict weights=models/run/model.safetensors size=224 img1.jpg img2.jpg
predict weights size='224' +images='':
    cargo run --release -- predict --weights {{trim_start_match(weights, "weights=")}} --image-size {{trim_start_match(size, "size=")}} {{images}}

# List the tensors of a weights file: just info weights=resnet18.safetensors
info weights:
    cargo run --release -- info --weights {{trim_start_match(weights, "weights=")}}

# Regenerate the torchvision parity fixtures (needs torch, torchvision, safetensors, pillow)
fixtures:
    python3 tests/fixtures/make_fixtures.py
