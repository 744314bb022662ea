#!/usr/bin/env bash
# Builds the Debian packages into target/debian/ (a release build; man pages
# and completions generated from it):
#   stj-common   /etc/stj/stj.toml (a conffile, every knob commented), README
#   stj-schedd   /usr/sbin/stj-schedd, stj-schedd.service (enabled, started)
#   stj-starter  /usr/sbin/stj-starter, libstj_preload.so, stj-starter.service
#                (installed, not started: the node needs its token first)
#   ssh-to-job   /usr/bin/ssh-to-job, stj, stj-proxy
# plus a -dbgsym .ddeb of each with the debug symbols. cargo-deb does the
# packaging (scripts/install-deps.sh installs it); the metadata is in each
# crate's Cargo.toml, units and maintainer scripts in packaging/.
#   scripts/package.sh [--fast]     (--fast: lighter compression, for tests)
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
case "${1:-}" in
  --fast) FAST=(--fast) ;;
  "") ;;
  *) echo "package.sh: unknown argument $1 (the only one is --fast)" >&2; exit 2 ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
  echo "package.sh: cargo-deb is missing: run scripts/install-deps.sh (or: cargo install cargo-deb --locked)" >&2
  exit 1
fi
rm -rf target/release/docs target/debian
scripts/gen-docs.sh target/release/docs release
# Debian policy: man pages gzipped (-n: no time stamp, so builds repeat).
gzip -9n target/release/docs/man/*
cargo deb --no-build --locked "${FAST[@]}" -p stj-common
for p in stj-schedd stj-starter ssh-to-job; do
  cargo deb --no-build --locked "${FAST[@]}" --dbgsym -p "$p"
done
ls target/debian/*.deb
