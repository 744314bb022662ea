#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECS seconds each:
#   scripts/fuzz.sh 30      # CI's smoke run
#   scripts/fuzz.sh 600     # a real run: 10 minutes per target
# Crashes land in fuzz/artifacts/TARGET/; make each one a regression test.
# cargo-fuzz needs nightly's -Z flags; only the stable toolchain can be had
# here, so RUSTC_BOOTSTRAP=1 unlocks them on stable.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in handshake capability preamble link_frame; do
  echo "== fuzz $t for ${SECS}s"
  cargo fuzz run "$t" -- -max_total_time="$SECS" 2>&1 | tail -n 3
done
