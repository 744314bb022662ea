#!/usr/bin/env bash
# Builds every binary once and runs every test (unit and end-to-end). The
# end-to-end tests start real daemons, create users and namespaces: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the end-to-end tests need root (useradd, namespaces, iptables)" >&2
  exit 1
fi

# One build shared by all tests: the e2e tests run these binaries from target/.
cargo build --workspace --locked
cargo test --workspace --locked -- --test-threads "${STJ_TEST_THREADS:-4}"
