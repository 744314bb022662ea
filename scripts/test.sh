#!/usr/bin/env bash
# Builds every binary once and runs every test (unit and end-to-end), then a
# benchmark smoke run. The end-to-end tests start real daemons, create users,
# namespaces and network namespaces: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the end-to-end tests need root (useradd, namespaces, iptables)" >&2
  exit 1
fi

# One build shared by all tests: the e2e tests run these binaries from target/.
cargo build --workspace --locked
# The Debian packages, which tests/tests/packages.rs installs, runs and purges.
scripts/package.sh --fast
mkdir -p target
cargo test --workspace --locked -- --test-threads "${STJ_TEST_THREADS:-4}" 2>&1 | tee target/test-output.log

# Benchmark smoke run: checks the benchmark completes and prints its table
# (numbers from a debug build mean nothing; see README, Performance).
target/debug/stj-bench --quick

# Fuzz smoke run: every parser that reads bytes from the network, 30 s each
# (STJ_FUZZ_SECS to change, 0 to skip).
if [ "${STJ_FUZZ_SECS:-30}" != 0 ]; then
  scripts/fuzz.sh "${STJ_FUZZ_SECS:-30}"
fi

# One closing line with the totals of every test binary above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log
