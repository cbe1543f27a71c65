#!/usr/bin/env bash
# Rill's test command (the README's, also run by .ci/run).
# Installs what the tests need on a fresh Debian machine, then runs every test.
#   RILL_TEST_LONG=1   run the long variants (crash loops with more cycles, longer fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

log() { printf '\n=== %s ===\n' "$*"; }

# --- system packages -------------------------------------------------------------------------
apt_packages=(kcat python3-venv cmake libcurl4-openssl-dev libsasl2-dev libssl-dev fonts-dejavu-core)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- python clients in a venv under target/ ---------------------------------------------------
venv="$root/target/venv"
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import confluent_kafka, kafka' 2>/dev/null; then
  log "installing python clients"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    'confluent-kafka==2.*' 'kafka-python==3.*' 'lz4' 'python-snappy' 'zstandard' 'cramjam'
fi
export RILL_TEST_PYTHON="$venv/bin/python"

# --- build once, test many times --------------------------------------------------------------
log "building"
cargo build --workspace --all-targets 
cargo build --release  --bin rill
export RILL_BIN="$root/target/release/rill"

log "unit, property and end-to-end tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace  --no-fail-fast
fi

log "doc tests"
cargo test --workspace  --doc

log "fuzzing (bounded): engine decoders"
fuzz_seconds=${RILL_FUZZ_SECONDS:-15}
[ "${RILL_TEST_LONG:-0}" = 1 ] && fuzz_seconds=${RILL_FUZZ_SECONDS:-300}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
for target in envelope_decode recovery_scan; do
  # Stable toolchain: cargo-fuzz needs -Z flags, RUSTC_BOOTSTRAP allows them (see NOTES).
  (cd engine && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time="$fuzz_seconds" \
     -print_final_stats=1 2>&1 | tail -n 3)
done

log "all tests passed"
