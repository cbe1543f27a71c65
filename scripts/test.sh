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
apt_packages=(kcat python3-venv cmake libcurl4-openssl-dev libsasl2-dev libssl-dev fonts-dejavu-core
  iproute2 iptables nftables e2fsprogs mount)
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
# One cargo profile (`ci`, see Cargo.toml) for every test binary and the broker the end-to-end
# tests spawn, so the workspace compiles once. (The vendored kafka-protocol is a path member of
# the workspace; it is not ours to test.)
log "building (profile ci)"
cargo nextest run --workspace --exclude kafka-protocol --cargo-profile ci --no-run
export RILL_BIN="$root/target/ci/rill"
[ -x "$RILL_BIN" ] || cargo build --profile ci --bin rill

log "unit, property and end-to-end tests"
cargo nextest run --workspace --exclude kafka-protocol --cargo-profile ci --no-fail-fast

log "doc tests"
cargo test --workspace --exclude kafka-protocol --doc --profile ci

log "fuzzing (bounded): request framing and decoding, record batches, envelopes, recovery"
fuzz_seconds=${RILL_FUZZ_SECONDS:-15}
[ "${RILL_TEST_LONG:-0}" = 1 ] && fuzz_seconds=${RILL_FUZZ_SECONDS:-300}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked
# Both fuzz crates share one target dir, so their common dependencies build once.
fuzz_target_dir="$root/target/fuzz"
for spec in fuzz:request_frame fuzz:record_batch engine/fuzz:envelope_decode engine/fuzz:recovery_scan; do
  dir=${spec%%:*}; target=${spec##*:}
  # cargo fuzz runs from the folder holding `fuzz/`. Stable toolchain: cargo-fuzz needs -Z
  # flags, RUSTC_BOOTSTRAP allows them (see NOTES).
  (cd "$root/$(dirname "$dir")" && RUSTC_BOOTSTRAP=1 cargo fuzz run --target-dir "$fuzz_target_dir" \
     "$target" -- -max_total_time="$fuzz_seconds" -print_final_stats=1 2>&1 | tail -n 3)
done

log "all tests passed"
